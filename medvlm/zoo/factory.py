"""Model factory: zoo names, open_clip names, hub ids and local folders -> `ClipModel`.

Like open_clip's factory, the zoo is a folder of JSON configs (`zoo/configs/<name>.json`)
readable in one screen. A config's `source` picks the backend builder in `BACKENDS`.

Offline use: set `MEDVLM_WEIGHTS=/mirror` and put each zoo model in `/mirror/<name>/`
in its native format (an open_clip `local-dir` folder, a transformers `save_pretrained`
folder, or the authors' checkpoint); nothing then touches the network.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError

from medvlm.errors import ModelError
from medvlm.zoo.base import ClipModel, ModelSpec
from medvlm.zoo.entries import zoo_entries
from medvlm.zoo.llava import HF_LLAVA_TYPES, ORIGINAL_LLAVA_TYPES, load_llava_hf, load_llava_original, model_type
from medvlm.zoo.hub import cached_copy, download_unreachable, offline_error, offline_guard


def _custom(module: str, function: str) -> Callable[[dict, ModelSpec, str | None], ClipModel]:
    """A builder from a backend module imported on first use (each pulls in its own dependencies)."""
    def build(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
        return getattr(importlib.import_module(f"medvlm.zoo.{module}"), function)(entry, spec, location)
    return build


BACKENDS: dict[str, Callable[[dict, ModelSpec, str | None], ClipModel]] = {
    "open_clip": _custom("open_clip_model", "load_open_clip"),
    "transformers": _custom("hf_clip_model", "load_transformers_clip"),
    "pmc_clip": _custom("pmc_clip", "load_pmc_clip"),
    "cxr_clip": _custom("cxr_clip", "load_cxr_clip"),
    "medclip": _custom("medclip", "load_medclip"),
    "siglip": _custom("siglip", "load_siglip"),
    "blip2": _custom("blip2", "load_blip2"),
}
GENERATIVE_SOURCES = ("llava", "llava_original")


def _mirror(name: str) -> str | None:
    root = os.environ.get("MEDVLM_WEIGHTS")
    path = Path(root) / name if root else None
    return str(path) if path is not None and path.exists() else None


def resolve(name: str) -> tuple[dict, str | None]:
    """Turn a model argument into (zoo-style entry, local location or None)."""
    entries = zoo_entries()
    if name in entries:
        return {**entries[name].model_dump(exclude_none=True), "name": name}, _mirror(name)
    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:"):]).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise ModelError(f"model folder {path} has no open_clip_config.json; "
                             f"save an open_clip model there (config + open_clip_model.safetensors) or fix the path")
        return {"source": "open_clip", "model": name, "name": name}, str(path)
    if name.startswith("hf-hub:"):
        return {"source": "open_clip", "model": name, "name": name}, None
    if name.startswith("hf:") or (Path(name).is_dir() and (Path(name) / "config.json").is_file()):
        ident = name[3:] if name.startswith("hf:") else name
        return {"source": _transformers_source(ident), "model": ident, "name": name}, ident if Path(ident).is_dir() else None
    if "@" in name:
        # lazy: open_clip takes seconds to import and only its own models need it
        import open_clip

        arch, tag = name.split("@", 1)
        if arch in open_clip.list_models():
            return {"source": "open_clip", "model": arch, "pretrained": tag, "name": name}, None
    raise ModelError(
        f"unknown model '{name}'; use a zoo name ({', '.join(entries)}; see `medvlm models`), "
        f"an open_clip ARCH@TAG (e.g. ViT-B-32-quickgelu@openai), hf-hub:ID, local-dir:PATH or hf:ID / a transformers folder"
    )


def _transformers_source(ident: str) -> str:
    """Backend of a transformers folder or Hub id by its config's model_type: LLaVA family or CLIP."""
    kind = model_type(ident)
    if kind in HF_LLAVA_TYPES:
        return "llava"
    return "llava_original" if kind in ORIGINAL_LLAVA_TYPES else "transformers"


def is_generative(name: str) -> bool:
    """Does this model argument name a generative (LLaVA-family) model? Reads configs only, loads no weights."""
    return resolve(name)[0]["source"] in GENERATIVE_SOURCES


def locate_weights(name: str) -> str:
    """Where a model's weights will come from, without loading them: a folder, a cache, or a reachable download.

    Raises the one-line `offline_error` when they are nowhere local and their source cannot be reached.
    """
    entry, location = resolve(name)
    if location is not None:
        return location
    cached = cached_copy(entry)
    if cached is not None:
        return cached
    reason = download_unreachable(entry)
    if reason is not None:
        raise offline_error(entry, reason)
    return f"download of {entry['model']}"


def spec_from_entry(entry: dict) -> ModelSpec:
    lora = entry.get("lora", {})
    towers = entry.get("towers", {})
    return ModelSpec(
        name=entry["name"],
        source=entry["model"] if "pretrained" not in entry else f"{entry['model']}@{entry['pretrained']}",
        domain=entry.get("domain", "unknown"),
        modality=entry.get("modality", "unknown"),
        pretraining=entry.get("pretraining", ""),
        licence=entry.get("licence", "unknown"),
        context_length=entry.get("context_length", 77),
        partial=list(entry.get("partial", [])),
        lora_vision=list(lora.get("vision", [])),
        lora_text=list(lora.get("text", [])),
        vision_prefix=towers.get("vision", "visual."),
        text_prefix=towers.get("text", "transformer."),
    )


def _corrupt_weights_errors() -> tuple[type[BaseException], ...]:
    return SafetensorError, pickle.UnpicklingError, EOFError


CORRUPT_WEIGHTS = _corrupt_weights_errors()


def load_vlm(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A generative `GenerativeVLM` from any model argument (zoo name, `hf:` id, folder), in eval mode on `device`.

    `dtype` is the storage type of the weights (bf16 frozen weights fit a 7B model on one GPU).
    """
    entry, location = resolve(name)
    loader = {"llava": load_llava_hf, "llava_original": load_llava_original}.get(entry["source"])
    if loader is None:
        raise ModelError(f"model '{name}' is not a LLaVA-family generative model; use llava-1.5-7b, llava-med, "
                         f"hf:<llava id> or a transformers Llava folder")
    with offline_guard(entry, location):
        model = loader(entry, spec_from_entry(entry), location, dtype)
    return model.to(device).eval()


def create_model(name: str, device: str | torch.device = "cpu") -> ClipModel:
    """Build a `ClipModel` from any supported model argument, in eval mode on `device`."""
    entry, location = resolve(name)
    backend = BACKENDS.get(entry["source"])
    if entry["source"] in GENERATIVE_SOURCES:
        raise ModelError(f"model '{name}' is a generative LLaVA-family model: it answers questions (task=vqa with "
                         f"strategy zeroshot, mlp or lora), it has no CLIP embeddings for {name!r} to serve here")
    if backend is None:
        raise ModelError(f"model '{name}' needs backend '{entry['source']}', which this medvlm build does not have")
    try:
        with offline_guard(entry, location):
            model = backend(entry, spec_from_entry(entry), location)
    except CORRUPT_WEIGHTS as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the weights of model '{name}' are corrupt or truncated ({reason}); download or export "
                         f"them again") from None
    return model.to(device).eval()
