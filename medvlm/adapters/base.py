"""LoRA adapters as MLflow models that load and predict, registered as the README's Model Registry section says.

A logged adapter holds: `adapter/` (peft safetensors + adapter_config.json), the task
head (safetensors) and `medvlm.json` (the base model argument, its weights pin, class
names). Loading rebuilds the base model through the zoo, refuses weights whose digest
differs from the pin, applies the adapter and the head, and predicts. Each model class states its
signature (named input columns, predict params) and an input example (`serving`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image
from safetensors.torch import load_file, save_file

import medvlm
from medvlm import names
from medvlm.errors import ModelError
from medvlm.metrics.classification import probabilities
from medvlm.strategies.lora import load_adapter, save_adapter
from medvlm.tasks.classification import ImageClassifier, LinearHead, PromptClassifier
from medvlm.zoo import create_model

ALIAS = "best"
# Tags: on a logged adapter, what registering it needs; on a version, the study that registered it;
# on a run, its logged adapter and the version made from it.
NAME_TAG, METRIC_TAG, VALUE_TAG, HIGHER_TAG, DESCRIPTION_TAG = (
    "medvlm.registered_name", "medvlm.selection_metric", "medvlm.selection_value", "medvlm.selection_higher",
    "medvlm.description")
STUDY_TAG, MODEL_TAG, REGISTERED_TAG = "medvlm.study_parent", "medvlm.logged_model", "medvlm.registered_model"
QUESTION_INPUTS = [ColSpec("binary", "image"), ColSpec("string", "question")]  # what the VQA adapters answer
EXAMPLE_QUESTION = "is there an abnormality?"


class ServedModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model that states what it takes and returns, so every logged adapter has a signature and an example."""

    def serving(self, meta: dict[str, Any]) -> tuple[ModelSignature, pd.DataFrame]:
        """The signature and an input example for a model with this `medvlm.json` metadata."""
        raise NotImplementedError


@dataclass
class Adapter:
    """What a run registers: the serving model, the base model's pin, the peft-wrapped network (None when
    no LoRA part trained), the trained heads and the task's own metadata."""

    python_model: ServedModel
    pin: dict[str, Any]
    peft_net: torch.nn.Module | None
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _pixels(cell: Any) -> np.ndarray:
    """One image cell: encoded bytes, a file path, or a pixel array (H,W[,C]) as it stands."""
    if isinstance(cell, np.ndarray):
        return cell
    return np.asarray(Image.open(io.BytesIO(cell) if isinstance(cell, (bytes, bytearray)) else cell).convert("RGB"))


def _images_from(model_input: pd.DataFrame) -> torch.Tensor:
    """uint8 [B,C,H,W] from the DataFrame column `image` (encoded bytes, paths or uint8 pixel arrays of one size)."""
    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
        raise ModelError("input must be a DataFrame with an 'image' column of encoded image bytes, file paths or "
                         "uint8 pixel arrays, e.g. pd.DataFrame({'image': list(images)})")
    arr = np.stack([_pixels(cell) for cell in model_input["image"]])
    if arr.dtype != np.uint8:
        raise ModelError(f"images must be uint8 (got {arr.dtype}); pass raw pixel arrays or encoded image bytes")
    if arr.ndim == 3:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


class AdapterModel(ServedModel):
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

    def serving(self, meta: dict[str, Any]) -> tuple[ModelSignature, pd.DataFrame]:
        """Input `image` (encoded bytes, a path or a uint8 pixel array); one probability column per class."""
        outputs = [ColSpec("double", name) for name in meta["class_names"]]
        return (serving_signature([ColSpec("binary", "image")], outputs, batch_size=64),
                pd.DataFrame({"image": [example_png()]}))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = _images_from(model_input)
        batch = int((params or {}).get("batch_size", 64))
        with torch.no_grad():
            logits = torch.cat([self.classifier(images[i:i + batch]) for i in range(0, len(images), batch)])
        probs = probabilities(logits, self.meta["kind"])
        return pd.DataFrame(probs, columns=self.meta["class_names"])


def example_png() -> bytes:
    """A small grey-gradient PNG: the input example every image-taking adapter is logged with."""
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(buffer, format="PNG")
    return buffer.getvalue()


def serving_signature(inputs: list[ColSpec], outputs: list[ColSpec], **params: int) -> ModelSignature:
    """Named input and output columns, and `predict`'s integer params with their defaults (MLflow drops
    params that the signature does not declare)."""
    return ModelSignature(Schema(inputs), Schema(outputs),
                          ParamSchema([ParamSpec(name, "long", value) for name, value in params.items()]))


def logged_model_name(run_name: str) -> str:
    """The run's name as a logged-model name (`tiny-clip-breastmnist-lora-trial-3-lr=2e-05`): MLflow refuses
    `/ : . % " '` in it, and six models all named "adapter" cannot be told apart."""
    name = run_name.replace(" · ", "-").replace(" ", "-")
    return "".join("_" if c in "/:.%\"'" else c for c in name)[:200] or "adapter"


def version_description(meta: dict[str, Any], selection: tuple[str, float, bool], test: tuple[str, float] | None) -> str:
    """A registered version's description: what it adapts, on which data, and how well it did."""
    pin = ", ".join(f"{k}={str(v)[:16] if k == 'sha256' else v}" for k, v in meta["pin"].items())
    lines = [f"{meta['strategy']} adapter of {meta['model']} (pinned: {pin}) for {meta['task']} on {meta['dataset']}.",
             f"Validation {selection[0]} = {selection[1]:.4f} (the best epoch, which these weights are)."]
    if test is not None:
        lines.append(f"Test {test[0]} = {test[1]:.4f}.")
    return "\n".join(lines)


def log_adapter(made: Adapter, meta: dict[str, Any], registered: str, selection: tuple[str, float, bool],
                description: str, best_epoch: int) -> str:
    """Log the adapter as an MLflow model named after its run, with its signature, input example and final
    metrics; returns its model id. What `register` needs later (name, selection, description) rides on its tags.

    `selection` is (validation metric name, value, higher_is_better) and `best_epoch` the index of the epoch
    whose weights these are: MLflow links the run's metrics at that epoch's step to the model, so its page
    shows the best epoch's numbers, and `attach_final_metrics` adds the single-valued ones (test, cost).
    """
    signature, example = made.python_model.serving(meta)
    metric, value, higher = selection
    tags = {NAME_TAG: registered, METRIC_TAG: metric, VALUE_TAG: repr(value), HIGHER_TAG: str(higher),
            DESCRIPTION_TAG: description}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifacts = {"meta": str(root / "medvlm.json")}
        if made.peft_net is not None:  # projector-only adapters have no LoRA part
            save_adapter(made.peft_net, root / "adapter")
            artifacts["adapter"] = str(root / "adapter")
        (root / "medvlm.json").write_text(json.dumps(meta, indent=2))
        for key, head in made.heads.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(root / f"{key}.safetensors"))
            artifacts[key] = str(root / f"{key}.safetensors")
        mlflow.flush_async_logging()  # the epochs' metrics must be in the store before MLflow links them
        run = mlflow.active_run().info
        client = MlflowClient()
        # the step by numbering, not read back from the store: the other ranks of a multi-process run log
        # into a throwaway store that holds no epochs
        step = names.epoch_number(best_epoch)
        # MLflow serves the input example once through the logged model (rebuilding the base model), so a
        # version whose example does not predict is caught here, as a warning in the log
        with quiet_known_notices():
            info = mlflow.pyfunc.log_model(
                name=logged_model_name(mlflow.get_run(run.run_id).info.run_name),
                python_model=made.python_model, artifacts=artifacts, code_paths=[str(Path(medvlm.__file__).parent)],
                pip_requirements=["torch", "torchvision", "open_clip_torch", "timm", "transformers", "peft",
                                  "safetensors", "pandas", "numpy", "pillow", "scikit-learn", "pyyaml", "pydantic"],
                signature=signature, input_example=example, tags=tags, step=step,
            )
    attach_final_metrics(client, run.run_id, info.model_id, step)
    mlflow.set_tag(MODEL_TAG, info.model_id)
    return info.model_id


class _KnownNotices(logging.Filter):
    """Drops the two lines MLflow's pyfunc logger prints on every adapter it logs and that say nothing
    about this one: the cloudpickle caveat (README's "Load adapters only from registries you trust"
    states it once) and "validating the input example". A failed validation still warns."""

    NOTICES = ("Passing a Python object as `python_model`", "Validating input example against model signature")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOTICES)


@contextmanager
def quiet_known_notices() -> Iterator[None]:
    logger, notices = logging.getLogger("mlflow.pyfunc"), _KnownNotices()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


def attach_final_metrics(client: MlflowClient, run_id: str, model_id: str, step: int) -> None:
    """Link the run's single-valued metrics (test, cost) to the model; those logged at `step` already are.

    The same metric records are logged again with the model id: the store keeps one copy in the run's
    history (an identical record is a duplicate) and adds the link, as MLflow's own linking at `step` does.
    """
    records = []
    for key in client.get_run(run_id).data.metrics:
        history = client.get_metric_history(run_id, key)
        if history and all(m.step != step for m in history):
            last = max(history, key=lambda m: (m.step, m.timestamp))
            records.append(Metric(last.key, last.value, last.timestamp, last.step, model_id=model_id, run_id=run_id))
    if records:
        client.log_batch(run_id, metrics=records)


def register(client: MlflowClient, model_id: str, run_id: str, study_parent: str | None = None) -> str:
    """Register a logged adapter as a new version with its description, point `best` at the best version, and
    tag the run with it; returns the version.

    A study registers its best trial once, from whichever worker summarises last; two summarising together
    both register, so each keeps its version only if it is the study's first and otherwise deletes it.
    """
    tags = client.get_logged_model(model_id).tags
    name, metric, higher = tags[NAME_TAG], tags[METRIC_TAG], tags[HIGHER_TAG] == "True"
    version_tags = {metric: tags[VALUE_TAG], "run_id": run_id, **({STUDY_TAG: study_parent} if study_parent else {})}
    version = mlflow.register_model(f"models:/{model_id}", name, tags=version_tags).version
    client.update_model_version(name, version, description=tags[DESCRIPTION_TAG])
    if study_parent:
        ours = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'")
                      if v.tags.get(STUDY_TAG) == study_parent)
        if ours[0] != int(version):
            client.delete_model_version(name, version)
            version = str(ours[0])
    point_best_alias(client, name, metric, higher)
    for run in filter(None, (run_id, study_parent)):
        client.set_tag(run, REGISTERED_TAG, f"{name}/{version}")
    return str(version)


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
