"""LoRA adapters as MLflow models that load and predict, registered as the README's Model Registry section says.

A logged adapter holds: `adapter/` (peft safetensors + adapter_config.json), the task
head (safetensors) and `medvlm.json` (the base model argument, its weights pin, class
names). Loading rebuilds the base model through the zoo, refuses weights whose digest
differs from the pin, applies the adapter and the head, and predicts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors.torch import load_file, save_file

import medvlm
from medvlm.errors import ModelError
from medvlm.metrics.classification import probabilities
from medvlm.strategies.lora import load_adapter, save_adapter
from medvlm.tasks.classification import ImageClassifier, LinearHead, PromptClassifier
from medvlm.zoo import create_model

ALIAS = "best"


@dataclass
class Adapter:
    """What a run registers: the serving model, the base model's pin, the peft-wrapped network (None when
    no LoRA part trained), the trained heads and the task's own metadata."""

    python_model: mlflow.pyfunc.PythonModel
    pin: dict[str, Any]
    peft_net: torch.nn.Module | None
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _images_from(model_input: Any) -> torch.Tensor:
    """uint8 [B,C,H,W] from an array (N,H,W[,C]) or a DataFrame column `image` of bytes or paths."""
    if isinstance(model_input, pd.DataFrame):
        col = model_input["image"]
        arrays = [np.asarray(Image.open(io.BytesIO(v) if isinstance(v, (bytes, bytearray)) else v).convert("RGB"))
                  for v in col]
        model_input = np.stack(arrays)
    arr = np.asarray(model_input)
    if arr.dtype != np.uint8:
        raise ModelError(f"images must be uint8 (got {arr.dtype}); pass raw pixel arrays or encoded image bytes")
    if arr.ndim == 3:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Base: rebuild the pinned base model and apply the LoRA adapter."""

    def load_base(self, context) -> None:
        self.meta = read_meta(context)
        clip = create_model(self.meta["model"])
        check_pin(self.meta, clip.spec.pin)
        clip.net = load_adapter(clip.net, context.artifacts["adapter"])
        self.clip = clip.eval()


def read_meta(context) -> dict[str, Any]:
    """The adapter's `medvlm.json`: base model argument, weights pin and the task's own facts."""
    return json.loads(Path(context.artifacts["meta"]).read_text())


def check_pin(meta: dict[str, Any], pin: dict[str, Any]) -> None:
    """Refuse base weights whose digest differs from the ones the adapter was trained on."""
    want = meta["pin"].get("sha256")
    if want and pin.get("sha256") != want:
        raise ModelError(f"base weights for '{meta['model']}' differ from the ones this adapter was trained on "
                         f"(sha256 {str(pin.get('sha256'))[:12]}… vs {want[:12]}…); restore the original weights")


class ClassifierAdapterModel(AdapterModel):
    """Predicts class probabilities (softmax, or sigmoid for multi-label) from images, with the run's
    head: its linear layer, or the prompt classifier on the recorded prompts (adapted text tower)."""

    def load_context(self, context) -> None:
        self.load_base(context)
        if self.meta.get("head") == "prompt":
            self.classifier = PromptClassifier(self.clip, self.meta["prompts"], self.meta["class_names"],
                                               self.meta["kind"]).eval()
            return
        state = load_file(context.artifacts["head"])
        head = LinearHead(state["linear.weight"].shape[1], state["linear.weight"].shape[0])
        head.load_state_dict(state)
        self.classifier = ImageClassifier(self.clip, head).eval()

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = _images_from(model_input)
        batch = int((params or {}).get("batch_size", 64))
        with torch.no_grad():
            logits = torch.cat([self.classifier(images[i:i + batch]) for i in range(0, len(images), batch)])
        probs = probabilities(logits, self.meta["kind"])
        return pd.DataFrame(probs, columns=self.meta["class_names"])


def log_adapter(python_model: AdapterModel, peft_net, heads: dict[str, torch.nn.Module], meta: dict[str, Any],
                registered_name: str, selection: tuple[str, float, bool]) -> str:
    """Log the adapter as an MLflow model, register it, and point the `best` alias at the best version.

    `selection` is (validation metric name, value, higher_is_better). Returns the registered version.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifacts = {"meta": str(root / "medvlm.json")}
        if peft_net is not None:  # projector-only adapters have no LoRA part
            save_adapter(peft_net, root / "adapter")
            artifacts["adapter"] = str(root / "adapter")
        (root / "medvlm.json").write_text(json.dumps(meta, indent=2))
        for key, head in heads.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(root / f"{key}.safetensors"))
            artifacts[key] = str(root / f"{key}.safetensors")
        info = mlflow.pyfunc.log_model(
            name="adapter", python_model=python_model, artifacts=artifacts,
            code_paths=[str(Path(medvlm.__file__).parent)],
            pip_requirements=["torch", "torchvision", "open_clip_torch", "timm", "transformers", "peft",
                              "safetensors", "pandas", "numpy", "pillow", "scikit-learn", "pyyaml", "pydantic"],
        )
    version = mlflow.register_model(info.model_uri, registered_name)
    client = MlflowClient()
    metric, value, higher = selection
    client.set_model_version_tag(registered_name, version.version, metric, str(value))
    client.set_model_version_tag(registered_name, version.version, "run_id", mlflow.active_run().info.run_id)
    point_best_alias(client, registered_name, metric, higher)
    mlflow.set_tag("medvlm.registered_model", f"{registered_name}/{version.version}")
    return str(version.version)


def best_version(client: MlflowClient, name: str, metric: str, higher: bool) -> str | None:
    """The version with the best `metric` tag; ties go to the newer version, so every writer agrees."""
    scored = [(float(mv.tags[metric]), int(mv.version)) for mv in client.search_model_versions(f"name='{name}'")
              if metric in mv.tags]
    if not scored:
        return None
    _, version = max(scored, key=lambda s: (s[0] if higher else -s[0], s[1]))
    return str(version)


def point_best_alias(client: MlflowClient, name: str, metric: str, higher: bool, attempts: int = 20) -> str | None:
    """Point `best` at the best version by compare-and-set: write, re-read, and retry until both agree.

    Concurrent registrations each tag their version first and then run this loop. Every write of
    the alias is followed by a re-read by the same writer, so a stale write (from a writer that had
    not yet seen a better version) is corrected by that writer, and the last check, by whoever
    finishes last, sees every version's tag.
    """
    for _ in range(attempts):
        best = best_version(client, name, metric, higher)
        try:
            current = client.get_model_version_by_alias(name, ALIAS).version
        except mlflow.exceptions.MlflowException:
            current = None
        if best is None or str(current) == best:
            return best
        client.set_registered_model_alias(name, ALIAS, best)
    raise ModelError(f"the '{ALIAS}' alias of {name} kept changing under concurrent registrations; rerun to settle it")


def registered_name(model: str, dataset: str, task: str) -> str:
    """`medvlm-<model>-<dataset>-<task>`, with path-like names reduced to a registry-safe slug.

    A dataset given as a path gets 8 hex digits of its absolute path after its base name, so
    `/a/labels.csv` and `/b/labels.csv` (different data) never share a registered model.
    """
    def slug(s: str) -> str:
        s = s.split(":", 1)[-1].rstrip("/")
        s = Path(s).name if ("/" in s or "\\" in s) else s
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in s).strip("-").lower()
    data = slug(dataset)
    if "/" in dataset or "\\" in dataset:
        where = os.path.abspath(os.path.expanduser(dataset.split(":", 1)[-1]))
        data = f"{data}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"
    return f"medvlm-{slug(model)}-{data}-{task}"
