"""Run plots: ROC curves, confusion matrix, learning curves (matplotlib, Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_curve  # noqa: E402

from medvlm.data.base import LabelKind  # noqa: E402
from medvlm.tracking import names  # noqa: E402


def roc_figure(y_true: np.ndarray, probs: np.ndarray, kind: LabelKind, class_names: list[str]):
    fig, ax = plt.subplots(figsize=(5, 5))
    if kind == "binary":
        curves = [(class_names[-1], y_true == 1, probs[:, -1])]
    elif kind == "multiclass":
        curves = [(name, y_true == i, probs[:, i]) for i, name in enumerate(class_names)]
    else:
        curves = [(name, y_true[:, i] == 1, probs[:, i]) for i, name in enumerate(class_names)]
    for name, positive, score in curves:
        if positive.any() and (~positive).any():
            fpr, tpr, _ = roc_curve(positive, score)
            ax.plot(fpr, tpr, label=name[:30])
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]):
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(class_names))))
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(class_names), 1.0 + 0.6 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    short = [n[:14] for n in class_names]
    ax.set_xticks(range(len(short)), short, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(short)), short, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.tight_layout()
    return fig


def learning_curves_figure(history: list[dict[str, float]]):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history) + 1)
    for key in (names.TRAIN_LOSS, names.VAL_LOSS):
        ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="loss", title="learning curves")
    ax.legend()
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)


def log_figures(figures: dict[str, object]) -> None:
    """Log each figure to the active MLflow run at its artifact path, then free it."""
    import mlflow  # lazy: studies and reports draw with this module and log through their own client

    for path, fig in figures.items():
        mlflow.log_figure(fig, path)
        close(fig)


def log_learning_curves(history: list[dict[str, float]]) -> None:
    if history:
        log_figures({"plots/learning_curves.png": learning_curves_figure(history)})
