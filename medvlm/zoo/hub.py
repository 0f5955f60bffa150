"""Hub-backed models that fail fast offline, with one line that says how to get the model.

Before a model is fetched from the Hugging Face Hub (or a release URL), one short probe says
whether the host answers. If it does not, the process switches huggingface_hub to offline mode:
a model in the Hugging Face cache still loads, a missing one fails at once instead of after a
minute of retries, and the error names the model, where it was looked for, the mirror layout
and the download-free recipe.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import constants, try_to_load_from_cache
from medvlm.errors import ModelError
from medvlm.network import clipped, unreachable
from medvlm.zoo.entries import zoo_entries

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TINY_RECIPE = ("python -c \"from medvlm.testing import save_tiny_open_clip; save_tiny_open_clip('tiny-clip')\" "
               "then model=local-dir:$PWD/tiny-clip (random weights, for trying medvlm out)")
LAYOUTS = {
    "open_clip": "an open_clip local-dir folder: open_clip_config.json + open_clip_model.safetensors",
    "transformers": "a transformers save_pretrained folder: config.json, weights and tokenizer files",
}


_switched_offline: dict[str, str] = {}  # the probe's answer, once this process turned offline mode on


def hub_unreachable() -> str | None:
    """Why the Hub cannot be used (HF_HUB_OFFLINE, or the probe's answer), or None; goes offline if unreachable."""
    if "reason" in _switched_offline:
        return _switched_offline["reason"]
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    reason = unreachable(constants.ENDPOINT)
    if reason:
        _switched_offline["reason"] = reason
        constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
        os.environ["HF_HUB_OFFLINE"] = "1"  # and by any subprocess
    return reason


def download_unreachable(entry: dict) -> str | None:
    """Why the model's own download source cannot be used, or None (it may still be cached)."""
    url = entry.get("download", {}).get("url")
    return unreachable(url) if url else hub_unreachable()


def cache_folder(entry: dict) -> Path:
    """Where a download of this model is cached: torch hub's folder for release URLs, else the Hugging Face cache."""
    if "url" in entry.get("download", {}):
        return Path(torch.hub.get_dir()) / "medvlm"
    return Path(constants.HF_HUB_CACHE)


def cached_copy(entry: dict) -> str | None:
    """The model's main file in its download cache, or None; nothing is downloaded."""
    download = entry.get("download", {})
    if "url" in download:
        cached = cache_folder(entry) / entry["checkpoint"]
        return str(cached) if cached.is_file() else None
    if "hf_repo" in download:
        repo, files, kind = download["hf_repo"], [download.get("filename", entry["checkpoint"])], download.get("repo_type", "model")
    elif entry["source"] == "open_clip":
        repo, files, kind = _open_clip_repo(entry), OPEN_CLIP_FILES, "model"
    else:
        repo, files, kind = entry["model"], ["config.json"], "model"
    for name in files if repo else []:
        found = try_to_load_from_cache(repo, name, repo_type=kind)
        if isinstance(found, str):
            return found
    return None


def _open_clip_repo(entry: dict) -> str | None:
    """The Hub repository open_clip reads the weights from (hf-hub:ID, or the pretrained tag's `hf_hub`)."""
    if entry["model"].startswith("hf-hub:"):
        return entry["model"][len("hf-hub:"):]
    # lazy: open_clip takes seconds to import and only its own models need it
    import open_clip

    return (open_clip.get_pretrained_cfg(entry["model"], entry.get("pretrained", "")).get("hf_hub") or "").strip("/") or None


def mirror_layout(entry: dict) -> str:
    """What the `$MEDVLM_WEIGHTS/<name>/` folder of this model holds."""
    if entry.get("checkpoint"):
        return f"the authors' file {entry['checkpoint']}"
    return LAYOUTS.get(entry["source"], LAYOUTS["transformers"])


def offline_error(entry: dict, reason: str, cause: BaseException | None = None) -> ModelError:
    """One line: the model, where it was looked for, the mirror layout and the download-free recipe."""
    name = entry["name"]
    root = os.environ.get("MEDVLM_WEIGHTS")
    if name in zoo_entries():
        looked = f"the mirror {Path(root) / name}" if root else "a mirror (MEDVLM_WEIGHTS is not set)"
        fix = (f"mirror it as $MEDVLM_WEIGHTS/{name}/ ({mirror_layout(entry)}; Hub repositories it depends on "
               f"in $MEDVLM_WEIGHTS/<org>/<repo>/)")
    else:
        looked = "a mirror (only zoo names use MEDVLM_WEIGHTS)"
        fix = f"save it locally ({mirror_layout(entry)}) and pass model=local-dir:PATH or the folder"
    cached = cached_copy(entry) if cause is not None else None
    state = (f"its cached copy {cached} did not load ({clipped(f'{type(cause).__name__}: {cause}', 160)})" if cached
             else f"it is in neither {looked} nor the cache {cache_folder(entry)}")
    return ModelError(f"model '{name}' cannot be loaded offline: {reason}, and {state}; {fix}, or run with no download "
                      f"at all: {TINY_RECIPE}; HF_HUB_OFFLINE=1 skips the network check")


@contextmanager
def offline_guard(entry: dict, location: str | None) -> Iterator[None]:
    """Around a model build: with no local copy and no network, fail at once with `offline_error`."""
    reason = None if location is not None else download_unreachable(entry)
    try:
        yield
    except Exception as exc:  # any loader failure while offline has the same fix for the user
        if reason is None:
            raise
        raise offline_error(entry, reason, exc) from None
