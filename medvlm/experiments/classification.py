"""One classification experiment: zero-shot or fine-tuning, evaluated on test and tracked."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pandas as pd
import torch

from medvlm.adapters.base import Adapter, ClassifierAdapterModel
from medvlm.config import RunConfig
from medvlm.data.base import ClassificationData, TensorRows
from medvlm.data.classification import load_classification
from medvlm.data.prompts import select_prompts
from medvlm.data.subsample import subsample_splits
from medvlm.engine.features import cached_features
from medvlm.engine.trainer import count_trainable, evaluate, freeze_unused
from medvlm.experiments.common import fit_evaluate_register, start
from medvlm.metrics.classification import classification_metrics, probabilities
from medvlm.progress import log
from medvlm.strategies import get_strategy
from medvlm.tasks.classification import (
    ClassificationObjective,
    ImageClassifier,
    LinearHead,
    PromptClassifier,
    head_outputs,
    model_device,
    zero_shot_head,
)
from medvlm import names
from medvlm.tracking import plots
from medvlm.tracking.figures import figure_path, log_figures
from medvlm.tracking.session import describe, log_dataset
from medvlm.zoo import ClipModel


def load_data(cfg: RunConfig, clip: ClipModel) -> ClassificationData:
    """The dataset's splits, with `train_fraction` applied (so lineage and feature caches see the subset)."""
    data = load_classification(dataset=cfg.dataset, size=cfg.size, data_root=cfg.data_root,
                               image_size=clip.preprocess.image_size, seed=cfg.seed, image_column=cfg.image_column,
                               label_columns=cfg.label_columns, label_policy=cfg.label_policy)
    data.splits = subsample_splits(data.splits, cfg)
    labels = getattr(data.splits["train"], "labels", None)
    if get_strategy(cfg.strategy).kind.trains and data.kind != "multilabel" and labels is not None:
        present = torch.unique(labels[labels >= 0]).tolist()
        if len(present) < 2:
            log.warning("the training split of %s holds a single class (%s): a classifier trained on it cannot "
                        "learn to tell classes apart; check the labels, the split or train_fraction",
                        data.name, [data.class_names[int(c)] for c in present])
    return data


def class_counts(data: ClassificationData, labels: torch.Tensor) -> dict[str, int]:
    """Examples per class; for multi-label data positives per label (uncertain -1 labels count nowhere)."""
    y = torch.as_tensor(labels)
    if data.kind == "multilabel":
        counts = (y == 1).sum(dim=0)
    else:
        y = y.reshape(-1)
        counts = torch.bincount(y[y >= 0].long(), minlength=len(data.class_names))
    return {name: int(n) for name, n in zip(data.class_names, counts.tolist())}


def log_lineage(data: ClassificationData) -> None:
    for split, ds in data.splits.items():
        digest = ds.digest() if hasattr(ds, "digest") else data.extra.get("digest", "")
        labels = getattr(ds, "labels", None)
        profile = {"rows": len(ds), "kind": data.kind,
                   **({"class_counts": class_counts(data, labels)} if labels is not None else {})}
        log_dataset(f"{data.name}/{split}", data.source, digest, context=split,
                    extra={"n": len(ds), "kind": data.kind, "classes": len(data.class_names)},
                    schema={"image": "binary", "label": "long"}, profile=profile)


def predictions_table(probs: np.ndarray, targets: np.ndarray, data: ClassificationData) -> pd.DataFrame:
    """One row per test sample: its index, true label(s), probability per class and prediction."""
    table = pd.DataFrame({"index": np.arange(len(probs))})
    if data.kind == "multilabel":
        table["label"] = [row.tolist() for row in targets]
        table["pred"] = [row.tolist() for row in (probs > 0.5).astype(int)]
    else:
        table["label"] = targets.astype(int)
        table["pred"] = (probs[:, -1] > 0.5).astype(int) if data.kind == "binary" else probs.argmax(1)
    for i, name in enumerate(data.class_names[:probs.shape[1]]):
        table[f"prob_{i}"] = probs[:, i]
    return table


def log_test_results(logits: torch.Tensor, targets: torch.Tensor, data: ClassificationData,
                     cfg: RunConfig) -> dict[str, float]:
    probs = probabilities(logits, data.kind)
    y = targets.numpy()
    metrics = {names.test(k): v for k, v in classification_metrics(y, probs, data.kind).items()}
    mlflow.log_metrics(metrics)
    table = predictions_table(probs, y, data)
    mlflow.log_table(table, "predictions.json")
    title = describe(cfg)
    figures = {figure_path("plots/roc", cfg.figure_format): plots.roc_figure(y, probs, data.kind, data.class_names, title)}
    if data.kind != "multilabel":
        figures[figure_path("plots/confusion_matrix", cfg.figure_format)] = plots.confusion_figure(
            y, table["pred"].to_numpy(), data.class_names, title)
    log_figures(figures)
    return metrics


def linear_head(cfg: RunConfig, clip: ClipModel, data: ClassificationData, prompts: list[list[str]]) -> LinearHead:
    """A linear head on image embeddings: random, or the zero-shot prompt embeddings (zeroshot, head_init=zeroshot)."""
    head = LinearHead(clip.embed_dim, head_outputs(data.kind, data.num_classes)).to(model_device(clip))
    trains = get_strategy(cfg.strategy).kind.trains
    if not trains or cfg.head_init == "zeroshot":
        head.set_zero_shot(zero_shot_head(clip, prompts, data.class_names, data.kind))
    return head.requires_grad_(trains)


def encoder_classifier(cfg: RunConfig, clip: ClipModel, data: ClassificationData,
                       prompts: list[list[str]]) -> ImageClassifier | PromptClassifier:
    """What partial/full/lora train: the prompt classifier or a linear head on the image tower. Parameters the
    strategy marks but the module never uses (the text side under a linear head) are frozen, so
    `trainable_params` counts what trains."""
    head = linear_head(cfg, clip, data, prompts) if cfg.head == "linear" else None
    clip = get_strategy(cfg.strategy).prepare(clip, cfg)
    module = ImageClassifier(clip, head) if head else PromptClassifier(clip, prompts, data.class_names, data.kind)
    module = module.to(model_device(clip))
    freeze_unused(module, data.splits["train"], model_device(clip))
    return module


def run_classification(cfg: RunConfig) -> dict[str, float]:
    """Run inside an active MLflow run; returns the test metrics."""
    accelerator, clip = start(cfg)
    device = accelerator.device
    strategy = get_strategy(cfg.strategy)
    data = load_data(cfg, clip)
    log_lineage(data)
    prompts = select_prompts(cfg.prompt_set, data.class_names, data.prompts)
    mlflow.log_dict({"prompt_set": cfg.prompt_set, "class_names": data.class_names, "prompts": prompts}, "prompts.json")

    if strategy.kind.trains_encoder:
        module = encoder_classifier(cfg, clip, data, prompts)
        clip, head = module.clip, getattr(module, "head", None)
        objective = ClassificationObjective(module, data.kind)
        train_set, val_set, test_set = data.splits["train"], data.splits["val"], data.splits["test"]
    else:
        head = linear_head(cfg, clip, data, prompts)
        clip = strategy.prepare(clip, cfg)
        t0 = time.perf_counter()
        feats = {s: TensorRows(*cached_features(clip, data.splits[s], cfg.eval_batch_size, device, cfg.precision))
                 for s in (("train", "val", "test") if strategy.kind.trains else ("test",))}
        mlflow.log_metric(names.COST_ENCODE_IMAGES_PER_S, sum(len(f) for f in feats.values()) / (time.perf_counter() - t0))
        objective = ClassificationObjective(head, data.kind)
        train_set, val_set, test_set = feats.get("train"), feats.get("val"), feats["test"]

    mlflow.log_metric(names.TRAINABLE_PARAMS, count_trainable(objective.module))

    def test() -> dict[str, float]:
        _, _, logits, targets = evaluate(accelerator, objective, test_set, cfg)
        return log_test_results(logits, targets, data, cfg)

    return fit_evaluate_register(cfg, accelerator, clip.spec.pin, objective, train_set, val_set, test, lambda: Adapter(
        ClassifierAdapterModel(), clip.spec.pin, clip.net, {"head": head} if head else {},
        {"kind": data.kind, "class_names": data.class_names, "head": "linear" if head else "prompt", "prompts": prompts}))
