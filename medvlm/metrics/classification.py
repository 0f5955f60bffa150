"""Classification metrics, computed exactly as MedMNIST's official evaluator does.

`medmnist.evaluator.getAUC/getACC` define the numbers the papers report, so AUC and ACC
follow them line for line (AUC from probabilities, ``>`` 0.5 thresholds, per-class or
per-label means); F1 and balanced accuracy come from scikit-learn on the same
predictions. Where MedMNIST would silently return NaN (a class absent from the test
labels, so AUC is undefined) we raise `DataError` instead: a NaN logged to MLflow as a
final test metric looks like a result, while the real fix is a different split or subset.
A validation split is only watched, not reported, so there the AUCs become NaN with a warning.
Multi-label entries of -1 (uncertain labels kept by `label_policy="ignore"`) are left out of
their label's metrics; MedMNIST itself has none, so its numbers are unchanged.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from medvlm.data.base import LabelKind
from medvlm.errors import DataError

THRESHOLD = 0.5
KINDS: tuple[LabelKind, ...] = ("binary", "multiclass", "multilabel")
Undefined = Literal["raise", "nan"]


def probabilities(logits: torch.Tensor | np.ndarray, kind: LabelKind) -> np.ndarray:
    """Model logits (N, C) -> probabilities: softmax for single-label tasks, sigmoid per label
    for multi-label. The one place this rule lives, so training, zero-shot and plots agree."""
    _check_kind(kind)
    x = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    if x.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(x.shape)}")
    out = torch.sigmoid(x) if kind == "multilabel" else torch.softmax(x, dim=-1)
    return out.numpy()


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, kind: LabelKind,
                           undefined: Undefined = "raise") -> dict[str, float]:
    """auc, auc_hard, acc, f1, f1_weighted and balanced_acc for one task kind.

    binary: y_true (N,) in {0, 1}, probs (N, 2); the score is the label-1 probability.
    multiclass: y_true (N,) in [0, C), probs (N, C); AUC is the mean one-vs-rest AUC, F1 macro.
    multilabel: y_true (N, L) in {-1, 0, 1}, probs (N, L); every metric is a mean over labels
    (f1_weighted weights labels by their positives). -1 marks an ignored entry
    (`label_policy="ignore"` in `medvlm.data.files`): each label is scored on its other rows.

    `auc_hard` is the same AUC computed from the hard predictions (one-hot argmax, or the 0.5
    threshold) as the MIDL paper's released code did: it is the mean of (TPR + TNR) / 2 per
    class, and exactly 0.5 for a model that always predicts one class. It exists only to set
    numbers beside published ones; `auc` (from scores) is the MedMNIST evaluator's metric.

    A class (or label) absent from `y_true` leaves AUC undefined: `undefined="raise"` (test
    splits) raises DataError, `undefined="nan"` (validation) warns and returns NaN for the
    two AUCs, whose means need every class; the other metrics stay defined.
    """
    y_true, probs = _validated(np.asarray(y_true), np.asarray(probs), kind)
    if kind == "multilabel":
        return _multilabel_metrics(y_true, probs, undefined)
    if kind == "binary":
        y_pred = (probs[:, -1] > THRESHOLD).astype(int)
        columns = [(y_true, probs[:, -1], y_pred, "the binary label")]
        f1 = f1_score(y_true, y_pred, average="binary", pos_label=1, zero_division=0)
    else:
        y_pred = np.argmax(probs, axis=-1)
        columns = [((y_true == i).astype(int), probs[:, i], (y_pred == i).astype(int), f"class {i}")
                   for i in range(probs.shape[1])]
        f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)
    auc, auc_hard = _mean_aucs(columns, undefined)
    return _as_floats(
        auc=auc,
        auc_hard=auc_hard,
        acc=accuracy_score(y_true, y_pred),
        f1=f1,
        f1_weighted=f1_score(y_true, y_pred, average="weighted", zero_division=0),
        balanced_acc=balanced_accuracy_score(y_true, y_pred),
    )


def _mean_aucs(columns: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], undefined: Undefined) -> tuple[float, float]:
    """Mean AUC from scores and from hard predictions over one-vs-rest columns (truth, score, prediction, name).

    Sums then divides, as MedMNIST's getAUC, so the score AUC matches it bit for bit."""
    absent = [(name, truth.size) for truth, _, _, name in columns if np.unique(truth).size < 2]
    if absent:
        message = f"AUC undefined: {absent[0][0]} has a single class in the evaluated labels ({absent[0][1]} samples)"
        if undefined == "raise":
            raise DataError(f"{message}; evaluate on a split that contains both positives and negatives for every "
                            "class/label")
        warnings.warn(f"{message}; auc and auc_hard are NaN for this split", UndefinedMetricWarning, stacklevel=3)
        return float("nan"), float("nan")
    auc = hard = 0.0
    for truth, score, pred, _ in columns:
        auc += roc_auc_score(truth, score)
        positive = truth == 1
        hard += (pred[positive].mean() + 1 - pred[~positive].mean()) / 2  # the ROC area of 0/1 scores: (TPR + TNR) / 2
    return auc / len(columns), hard / len(columns)


def _multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, undefined: Undefined) -> dict[str, float]:
    """One binary problem per label on its masked-in rows, then means over labels. Without
    ignored entries this equals MedMNIST (AUC, ACC) and sklearn's macro/weighted F1."""
    columns = []
    for i in range(probs.shape[1]):
        keep = y_true[:, i] >= 0
        columns.append((y_true[keep, i], probs[keep, i], (probs[keep, i] > THRESHOLD).astype(int), f"label {i}"))
    auc, auc_hard = _mean_aucs(columns, undefined)
    acc, f1, balanced, positives = (np.zeros(probs.shape[1]) for _ in range(4))
    for i, (y, _, pred, _) in enumerate(columns):
        acc[i] = accuracy_score(y, pred)
        f1[i] = f1_score(y, pred, zero_division=0)
        balanced[i] = balanced_accuracy_score(y, pred) if np.unique(y).size > 1 else np.nan
        positives[i] = y.sum()
    return _as_floats(
        auc=auc,
        auc_hard=auc_hard,
        acc=acc.sum() / len(acc),
        f1=f1.mean(),
        f1_weighted=np.average(f1, weights=positives) if positives.sum() else np.nan,
        balanced_acc=balanced.mean(),
    )


def _as_floats(**metrics: float) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def _validated(y_true: np.ndarray, probs: np.ndarray, kind: LabelKind) -> tuple[np.ndarray, np.ndarray]:
    """Shape and value checks: a silent broadcast or a label-vs-column mismatch gives plausible wrong numbers."""
    _check_kind(kind)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"probs must have shape (N, C) with N > 0, got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contain NaN or inf")
    n, c = probs.shape
    if kind == "multilabel":
        if y_true.shape != probs.shape:
            raise ValueError(f"multilabel y_true must have the shape of probs {probs.shape}, got {y_true.shape}")
        valid = np.isin(y_true, (-1, 0, 1)).all()
    else:
        if y_true.shape != (n,):
            raise ValueError(f"{kind} y_true must have shape ({n},) to match probs {probs.shape}, got {y_true.shape}")
        if kind == "binary" and c != 2:
            raise ValueError(f"binary probs must have 2 columns (softmax over both classes), got {c}")
        valid = np.isin(y_true, np.arange(c)).all()
    if not valid:
        allowed = {"binary": "{0, 1}", "multiclass": f"0..{c - 1}", "multilabel": "{-1 (ignored), 0, 1}"}[kind]
        raise ValueError(f"{kind} y_true values must be in {allowed}, got {np.unique(y_true)[:10].tolist()}")
    return y_true.astype(int), probs


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
