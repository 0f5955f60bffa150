"""Reading the authors' own checkpoint files: found offline, unpickled safely, loaded strictly.

Every custom backend (PMC-CLIP, CXR-CLIP, MedCLIP, ...) loads through these helpers, so
each one proves the same three things: the file is where the user was told to put it,
nothing in it runs code, and every tensor lands in the model (the only keys left over are
ones the backend names and explains).

Where files live (offline first): `$MEDVLM_WEIGHTS/<zoo name>/<file>` for a model's own
checkpoint, and `$MEDVLM_WEIGHTS/<org>/<repo>/` for a Hugging Face repository a model
depends on (e.g. the BERT config and vocabulary of its text tower), laid out as
`huggingface-cli download <org>/<repo> --local-dir $MEDVLM_WEIGHTS/<org>/<repo>` leaves it.
Without a mirror the Hub id is used as is (the Hugging Face cache, or the network).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from torch import nn

from medvlm.errors import ModelError
from medvlm.network import clipped

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".tar")

# Module-name suffixes LoRA adapts, by attention implementation (used when no zoo entry says).
OPEN_CLIP_BLOCK = ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
TIMM_BLOCK = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
BERT_BLOCK = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
HF_CLIP_BLOCK = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]


def weights_digest(path: Path) -> str:
    """sha256 over the weight files of a folder (or one file): pins what an adapter was trained on."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_root() -> Path | None:
    root = os.environ.get("MEDVLM_WEIGHTS")
    return Path(root).expanduser() if root else None


def hub_source(repo_id: str) -> str:
    """A local mirror folder of a Hub repository if `$MEDVLM_WEIGHTS/<repo_id>` exists, else the id."""
    root = weights_root()
    mirror = root / repo_id if root is not None else None
    return str(mirror) if mirror is not None and mirror.is_dir() else repo_id


def open_clip_local_kwargs(location: str | None) -> dict:
    """open_clip `create_model` kwargs for a local model folder; refuses a folder without weights.

    open_clip builds a randomly initialised model, with only a log line, when a local folder
    holds a config but no weights; a zoo model must never run at random init, so that is an
    error here. BiomedCLIP's config names its BERT by Hub id, and open_clip reads that BERT's
    config.json even though the CLIP checkpoint holds every weight: with
    `$MEDVLM_WEIGHTS/<hub id>/` present the tower is built from there, so nothing goes online.
    """
    if location is None:
        return {}
    folder = Path(location)
    if not any(folder.glob(pattern) for pattern in ("*.safetensors", "*.bin", "*.pth")):
        raise ModelError(f"model folder {folder} has open_clip_config.json but no weights; put "
                         f"open_clip_model.safetensors (or the Hub's open_clip_pytorch_model.bin) there")
    text_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"].get("text_cfg", {})
    hub_id = text_cfg.get("hf_model_name")
    if not hub_id:
        return {}
    if hub_source(hub_id) == hub_id:
        _require_reachable(hub_id, folder)
        return {}
    return {"text_cfg": {**text_cfg, "hf_model_name": hub_source(hub_id), "hf_model_pretrained": False}}


def _require_reachable(hub_id: str, folder: Path) -> None:
    """Offline with neither a mirror nor a cached copy of `hub_id`: say where its config.json belongs."""
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        raise ModelError(f"model folder {folder} needs the text tower config of {hub_id}, which is neither "
                         f"mirrored nor cached and HF_HUB_OFFLINE is set; put its config.json in "
                         f"$MEDVLM_WEIGHTS/{hub_id}/")


def checkpoint_file(name: str, location: str | None, filename: str, download: dict | None = None) -> Path:
    """The model's checkpoint file: in its local folder, else fetched as the zoo entry says.

    `download` is `{"hf_repo": ..., "repo_type": ..., "filename": ...}` or `{"url": ...}`.
    A file that is neither local nor fetchable gives one line naming it and where it belongs.
    """
    if location is not None:
        path = Path(location)
        path = path if path.is_file() else path / filename
        if path.is_file():
            return path
        raise ModelError(f"model '{name}': checkpoint {filename} not found in {Path(location)}; "
                         f"put the authors' file there as {Path(location) / filename}")
    where = f"$MEDVLM_WEIGHTS/{name}/{filename}"
    if not download:
        raise ModelError(f"model '{name}': checkpoint {filename} not found; put it at {where}")
    try:
        return _fetch(download, filename)
    except Exception as exc:  # any network or hub failure means the same fix for the user
        raise ModelError(
            f"model '{name}': checkpoint {filename} not found locally and could not be downloaded "
            f"({type(exc).__name__}: {clipped(str(exc), 160)}); put it at {where}"
        ) from None


def _fetch(download: dict, filename: str) -> Path:
    if "hf_repo" in download:
        return Path(hf_hub_download(download["hf_repo"], download.get("filename", filename),
                                    repo_type=download.get("repo_type", "model")))
    cache = Path(torch.hub.get_dir()) / "medvlm" / filename
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(download["url"], str(cache))
    return cache


class Opaque:
    """Inert stand-in for a non-tensor object a checkpoint pickled (e.g. its OmegaConf config).

    It is built from the pickled data only and runs none of the original class's code, so a
    checkpoint that also stores its training config reads as safely as `weights_only=True`.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def load_torch_checkpoint(path: Path) -> Any:
    """`torch.load(weights_only=True)`; objects of foreign classes come back as `Opaque`.

    Torch's own restricted unpickler does the work either way. A class it does not allow
    (checkpoints that pickled a Hydra/OmegaConf config next to the weights) is not imported:
    its name is registered, for this call only, as the inert `Opaque`.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    with torch.serialization.safe_globals([(Opaque, name) for name in foreign]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ModelError(f"checkpoint {path} holds objects that cannot be read safely "
                             f"({clipped(str(exc), 160)}); re-save its state_dict with torch.save") from None


def take(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove and return the entries under `prefix`, with the prefix stripped."""
    keys = [k for k in state if k.startswith(prefix)]
    return {k[len(prefix):]: state.pop(k) for k in keys}


def required(state: dict[str, torch.Tensor], key: str, name: str) -> torch.Tensor:
    """A tensor the architecture is sized from; its absence means the file is some other checkpoint."""
    if key not in state:
        raise ModelError(f"model '{name}': checkpoint has no '{key}'; it is not the release medvlm reads")
    return state[key]


def drop_index_buffers(state: dict[str, torch.Tensor], suffix: str, expected: torch.Tensor | None,
                       name: str) -> list[str]:
    """Drop stale constant index buffers (e.g. BERT's `position_ids`) after checking their values.

    Older transformers saved these persistent; current ones rebuild them, so the keys are
    left over. They carry no learned value: each one must equal `expected` (a prefix of it),
    or the checkpoint is not what the backend assumes and loading stops.
    """
    dropped = []
    for key in [k for k in state if k.endswith(suffix)]:
        value = state.pop(key)
        if expected is not None and not torch.equal(value.reshape(-1).long(),
                                                    expected.reshape(-1)[:value.numel()].long()):
            raise ModelError(f"model '{name}': {key} does not hold the expected constant index; the checkpoint "
                             f"is not in the format medvlm reads")
        dropped.append(key)
    return dropped


def _report(name: str, what: str, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        raise ModelError(f"model '{name}': {what} does not match the checkpoint (missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}); the file is not the release medvlm reads")


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], name: str, what: str,
               loaded: tuple[str, ...] = ()) -> None:
    """`load_state_dict` that must match exactly: a one-line ModelError on any missing or extra key.

    `loaded` names submodules (prefixes) the caller already filled strictly by other means.
    """
    expected = {k for k in module.state_dict() if not k.startswith(loaded)}
    _report(name, what, expected - set(state), set(state) - expected)
    module.load_state_dict(state, strict=not loaded)


def hf_from_state(cls: type, config: Any, state: dict[str, torch.Tensor], name: str, what: str,
                  **model_kwargs: Any) -> nn.Module:
    """A transformers model built from `config` with `state` as its weights, strictly.

    Goes through `from_pretrained(state_dict=...)`, so transformers' own renames for
    checkpoints saved by older versions apply (e.g. Swin's `attention.self.query` ->
    `attention.q_proj`). Any key it reports missing, unexpected or mismatched stops loading.
    """
    model, info = cls.from_pretrained(None, config=config, state_dict=state, output_loading_info=True, **model_kwargs)
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    _report(name, what, list(info["missing_keys"]) + mismatched, info["unexpected_keys"])
    return model.float().eval()
