"""Model factory: zoo names, open_clip names, hub ids and local folders -> `ClipModel`.

Like open_clip's factory, the zoo is a folder of JSON configs (`zoo/configs/<name>.json`)
readable in one screen. A config's `source` picks the backend builder in `BACKENDS`.

Offline use: set `MEDVLM_WEIGHTS=/mirror` and put each zoo model in `/mirror/<name>/`
in its native format (an open_clip `local-dir` folder, a transformers `save_pretrained`
folder, or the authors' checkpoint); nothing then touches the network.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from medvlm.errors import ModelError
from medvlm.zoo.base import ClipModel, ModelSpec
from medvlm.zoo.checkpoints import open_clip_local_kwargs
from medvlm.zoo.hub import offline_guard

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".tar")

# Module-name suffixes LoRA adapts, by attention implementation (used when no zoo entry says).
OPEN_CLIP_BLOCK = ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
TIMM_BLOCK = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
BERT_BLOCK = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
HF_CLIP_BLOCK = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
PARTIAL_CANDIDATES = ["visual.proj", "visual.head.proj", "visual.attnpool.c_proj", "text_projection",
                      "text.proj", "visual_projection", "logit_scale", "logit_bias"]


@lru_cache(maxsize=None)
def zoo_entries() -> dict[str, dict]:
    """Every zoo entry by name, read from `configs/*.json`."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}


def list_models() -> list[str]:
    return list(zoo_entries())


def weights_digest(path: Path) -> str:
    """sha256 over the weight files of a folder (or one file): pins what an adapter was trained on."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _has_prefix(net: nn.Module, prefix: str) -> bool:
    return any(n == prefix or n.startswith(prefix + ".") for n, _ in net.named_parameters())


def _block_suffixes(tower: nn.Module) -> list[str]:
    names = {n for n, _ in tower.named_modules()}
    if any(isinstance(m, nn.MultiheadAttention) for m in tower.modules()):
        return OPEN_CLIP_BLOCK
    for suffixes in (TIMM_BLOCK, BERT_BLOCK, HF_CLIP_BLOCK):
        if any(n.endswith(suffixes[0]) for n in names):
            return suffixes
    return []


def infer_open_clip_spec(net: nn.Module, spec: ModelSpec) -> ModelSpec:
    """Fill `partial`/`lora` defaults for open_clip models no zoo entry describes."""
    if not spec.partial:
        spec.partial = [p for p in PARTIAL_CANDIDATES if _has_prefix(net, p)]
    spec.text_prefix = "text." if hasattr(net, "text") else "transformer."
    if not spec.lora_vision:
        spec.lora_vision = _block_suffixes(net.visual)
    if not spec.lora_text:
        text_tower = net.text if hasattr(net, "text") else net.transformer
        spec.lora_text = _block_suffixes(text_tower)
    return spec


def _open_clip_error(name: str, where: str, exc: Exception) -> ModelError:
    return ModelError(
        f"cannot load weights for model '{name}' from {where} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
        f"on an offline machine put the model in $MEDVLM_WEIGHTS/{name}/ (open_clip local-dir layout) "
        f"or pass model=local-dir:PATH"
    )


def build_open_clip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    import open_clip

    from medvlm.zoo.open_clip_model import OpenClipModel

    if location is not None:
        model_name, pretrained = f"local-dir:{location}", None
    else:
        model_name, pretrained = entry["model"], entry.get("pretrained")
    kwargs = {}
    if entry.get("context_length"):
        kwargs["context_length"] = entry["context_length"]
    try:
        net = open_clip.create_model(model_name, pretrained=pretrained, load_weights=True,
                                     **entry.get("create_kwargs", {}), **open_clip_local_kwargs(location))
        tokenizer = open_clip.get_tokenizer(model_name, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _open_clip_error(spec.name, location or model_name + (f" (tag {pretrained})" if pretrained else ""), exc) from None
    if location is not None:
        spec.pin = {"model": f"local-dir:{Path(location).resolve()}", "sha256": weights_digest(Path(location))}
    else:
        spec.pin = {"model": entry["model"], "pretrained": pretrained}
    return OpenClipModel(net.float(), tokenizer, infer_open_clip_spec(net, spec))


def build_transformers_clip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    from medvlm.zoo.hf_clip_model import load_transformers_clip

    return load_transformers_clip(entry, spec, location)


def _custom(module: str, function: str) -> Callable[[dict, ModelSpec, str | None], ClipModel]:
    """A builder from a backend module imported on first use (each pulls in its own dependencies)."""
    def build(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
        return getattr(importlib.import_module(f"medvlm.zoo.{module}"), function)(entry, spec, location)
    return build


BACKENDS: dict[str, Callable[[dict, ModelSpec, str | None], ClipModel]] = {
    "open_clip": build_open_clip,
    "transformers": build_transformers_clip,
    "pmc_clip": _custom("pmc_clip", "load_pmc_clip"),
    "cxr_clip": _custom("cxr_clip", "load_cxr_clip"),
    "medclip": _custom("medclip", "load_medclip"),
    "siglip": _custom("siglip", "load_siglip"),
    "blip2": _custom("blip2", "load_blip2"),
}


def _mirror(name: str) -> str | None:
    root = os.environ.get("MEDVLM_WEIGHTS")
    path = Path(root) / name if root else None
    return str(path) if path is not None and path.exists() else None


def resolve(name: str) -> tuple[dict, str | None]:
    """Turn a model argument into (zoo-style entry, local location or None)."""
    entries = zoo_entries()
    if name in entries:
        return {**entries[name], "name": name}, _mirror(name)
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
        return {"source": "transformers", "model": ident, "name": name}, ident if Path(ident).is_dir() else None
    if "@" in name:
        import open_clip

        arch, tag = name.split("@", 1)
        if arch in open_clip.list_models():
            return {"source": "open_clip", "model": arch, "pretrained": tag, "name": name}, None
    raise ModelError(
        f"unknown model '{name}'; use a zoo name ({', '.join(entries)}; see `medvlm models`), "
        f"an open_clip ARCH@TAG (e.g. ViT-B-32-quickgelu@openai), hf-hub:ID, local-dir:PATH or hf:ID / a transformers folder"
    )


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


def create_model(name: str, device: str | torch.device = "cpu") -> ClipModel:
    """Build a `ClipModel` from any supported model argument, in eval mode on `device`."""
    entry, location = resolve(name)
    backend = BACKENDS.get(entry["source"])
    if backend is None:
        raise ModelError(f"model '{name}' needs backend '{entry['source']}', which this medvlm build does not have")
    with offline_guard(entry, location):
        model = backend(entry, spec_from_entry(entry), location)
    return model.to(device).eval()
