"""Per-run epoch checkpoints for `resume`, in a format that cannot run code.

A checkpoint is one safetensors file: every tensor (trainable weights, the best weights so far,
optimiser moments, RNG states) as a tensor, and the rest of the loop state as JSON in the file's
metadata. Loading it never unpickles anything, so a planted file can at worst be refused.
It also records whose it is (run id, config hash, model pin); a checkpoint written for another
run, another config or other base weights is refused instead of silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from medvlm.config import RunConfig
from medvlm.errors import TrainingError, one_line

CHECKPOINT_FILE = "last.safetensors"
BEST_FILES = "best-*.safetensors"  # best epochs' trainable weights, beside the checkpoint (see trainer.BestWeights)
# Where a run trains, not what it trains: these may differ between the original run and its resume.
MACHINE_FIELDS = frozenset({"resume", "checkpoint_dir", "checkpoint_every", "data_root", "num_workers",
                            "eval_batch_size", "experiment", "run_name"})


def config_hash(resolved: dict[str, Any]) -> str:
    """A digest of the config fields that define what is trained."""
    kept = {k: v for k, v in resolved.items() if k not in MACHINE_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_identity(run_id: str, resolved_config: dict[str, Any], pin: dict[str, Any]) -> dict[str, str]:
    return {"run_id": run_id, "config": config_hash(resolved_config),
            "pin": json.dumps(pin, sort_keys=True, default=str)}


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no storage shared between two of them (tied weights), as safetensors requires;
    only a repeated storage is copied, the rest are written straight from the live tensors."""
    out, seen = {}, set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen and tensor.numel() else tensor
        seen.add(ptr)
    return out


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON, with each tensor or array moved into `tensors` and referenced by key."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind in "iu" else obj.copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, tensors) for k, v in obj.items()}}
        return {"__items__": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        return tensors[node["__ndarray__"]].numpy().astype(node["dtype"])
    if "__dict__" in node:
        return {k: _decode(v, tensors) for k, v in node["__dict__"].items()}
    if "__items__" in node:
        return {k: _decode(v, tensors) for k, v in node["__items__"]}
    if "__tuple__" in node:
        return tuple(_decode(v, tensors) for v in node["__tuple__"])
    return [_decode(v, tensors) for v in node["__list__"]]


def load_trainable(path: Path) -> dict[str, torch.Tensor]:
    """The trainable weights in a checkpoint file, or in a plain safetensors weights file; never unpickled."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if "medvlm.state" in meta:
        return _decode(json.loads(meta["medvlm.state"]), tensors)["trainable"]
    return tensors


class Checkpoints:
    """The checkpoint of one run: `<root>/<run_id>/last.safetensors`, written atomically at an epoch's end."""

    def __init__(self, root: str | os.PathLike, run_id: str, identity: dict[str, str]):
        self.path = Path(root) / run_id / CHECKPOINT_FILE
        self.identity = identity

    @classmethod
    def for_run(cls, cfg: RunConfig, run_id: str, pin: dict[str, Any]) -> Checkpoints:
        return cls(cfg.checkpoint_dir, run_id, checkpoint_identity(run_id, cfg.resolved(), pin))

    def save(self, payload: dict[str, Any]) -> None:
        tensors: dict[str, torch.Tensor] = {}
        state = _encode(payload, tensors)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file(unshared(tensors), str(tmp), metadata={"medvlm.identity": json.dumps(self.identity),
                                                   "medvlm.state": json.dumps(state)})
            os.replace(tmp, self.path)
        except (OSError, SafetensorError) as exc:
            tmp.unlink(missing_ok=True)
            raise TrainingError(f"cannot write checkpoint {self.path} ({one_line(exc)[:160]}); free disk space or "
                                f"pass checkpoint_dir=WRITABLE_FOLDER") from None

    def load(self) -> dict[str, Any] | None:
        """The saved loop state, or None when this run has none; refuses another run's checkpoint."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            identity, state = json.loads(meta["medvlm.identity"]), json.loads(meta["medvlm.state"])
            payload = _decode(state, tensors)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line advice
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise TrainingError(f"checkpoint {self.path} is unreadable ({reason}); delete it to train this run "
                                f"from the start") from None
        for key, what in (("run_id", "run"), ("config", "config"), ("pin", "base weights")):
            if identity.get(key) != self.identity[key]:
                raise TrainingError(f"checkpoint {self.path} was written for another {what} ({key} "
                                    f"{str(identity.get(key))[:40]} vs {self.identity[key][:40]}); resume with the "
                                    f"original parameters and weights, or delete it to start over")
        return payload

    def clear(self) -> None:
        """Delete the checkpoint, the best weights and the run's folder, which only they live in."""
        self.path.unlink(missing_ok=True)
        for best in self.path.parent.glob(BEST_FILES):
            best.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # gone already, or another file (not ours) still lives there
            pass
