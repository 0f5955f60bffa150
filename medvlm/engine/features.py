"""Frozen-encoder features, computed once and cached on disk.

Zero-shot, the linear probe and frozen-encoder studies need each image embedded exactly
once. The cache key pins the weights (digest or hub id), the preprocessing and the data,
so a trial of a study re-uses what an earlier trial on the same model and data computed.
A study worker also keeps the last frozen model it loaded (`frozen_model`): its trials
differ only in head hyperparameters, and re-reading and re-hashing the weights per trial
cost more than training the head.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from medvlm.data.base import collate_batch
from medvlm.data.content import cache_root
from medvlm.errors import DataError, one_line
from medvlm.data.transforms import to_model_input
from medvlm.progress import log, tracked
from medvlm.zoo.base import ClipModel
from medvlm.zoo.factory import create_model, resolve

_frozen: dict[tuple, ClipModel] = {}


def _files_stamp(location: str | None) -> tuple:
    """Size and mtime of every file of a local model: a rewritten folder is a different model."""
    if location is None:
        return ()
    root = Path(location)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def frozen_model(name: str, device: torch.device) -> ClipModel:
    """`create_model(name)` for runs that never change the encoder, built once per process and shared.

    One model is kept (the next name replaces it); `release_frozen_model` frees it before a run
    that trains an encoder, so a worker never holds a frozen copy beside a trained one.
    """
    key = (name, str(device), _files_stamp(resolve(name)[1]))
    if key not in _frozen:
        release_frozen_model()
        _frozen[key] = create_model(name, device=device)
    else:
        log.info("re-using the frozen %s already loaded in this process", name)
    return _frozen[key]


def release_frozen_model() -> None:
    _frozen.clear()


def model_for_run(name: str, device: torch.device, trains_encoder: bool) -> ClipModel:
    """A fresh model for a run that trains its encoder (after releasing any shared frozen one), else the shared one."""
    if trains_encoder:
        release_frozen_model()
        return create_model(name, device=device)
    return frozen_model(name, device)


def autocast_for(device: torch.device, precision: str):
    """Mixed precision where the hardware has it: bf16 (or fp16) on CUDA, none on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def encode_dataset(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int,
                   device: torch.device, precision: str = "auto", num_workers: int = 0,
                   what: str = "encoding") -> tuple[torch.Tensor, torch.Tensor]:
    """Run `encode` over a dataset of (uint8 images, labels); return (float32 features, labels) on CPU."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batch,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    feats, labels = [], []
    for images, y in tracked(loader, what, len(dataset), size=lambda batch: len(batch[1])):
        with autocast_for(device, precision):
            feats.append(encode(images.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def image_embedder(model: ClipModel) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda images: model.encode_image(to_model_input(images, model.preprocess))


def feature_key(model: ClipModel, dataset_digest: str, kind: str) -> str:
    payload = {"pin": model.spec.pin or model.spec.source, "pre": repr(model.preprocess),
               "data": dataset_digest, "kind": kind}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_features(model: ClipModel, dataset: Dataset, batch_size: int, device: torch.device,
                    precision: str = "auto", kind: str = "image_embedding",
                    encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of `dataset` under `model`, from the disk cache when the same pair was seen before.

    Only pinned models (a weights digest or a fixed hub revision) and datasets with a digest are cached:
    anything else could silently serve stale features.
    """
    digest = getattr(dataset, "digest", None)
    pinned = bool(model.spec.pin.get("sha256") or model.spec.pin.get("revision") or model.spec.pin.get("pretrained"))
    encode = encode or image_embedder(model)
    if digest is None or not pinned:
        return encode_dataset(encode, dataset, batch_size, device, precision, what=f"encoding ({kind})")
    path = cache_root() / f"{feature_key(model, digest(), kind)}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        log.info("%s of %d images from the feature cache (%s)", kind, len(dataset), path.name)
        return blob["features"], blob["labels"]
    log.info("encoding %d images (%s) with %s", len(dataset), kind, model.spec.name)
    feats, labels = encode_dataset(encode, dataset, batch_size, device, precision, what=f"encoding ({kind})")
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": feats, "labels": labels}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write the feature cache {path} ({one_line(exc)[:160]}); free disk space or set "
                        f"MEDVLM_CACHE to a writable folder") from None
    return feats, labels
