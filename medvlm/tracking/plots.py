"""A run's plots: ROC curves, the confusion matrix, learning curves and recall@k, in the shared figure style."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, confusion_matrix, roc_auc_score, roc_curve

from medvlm.data.base import LabelKind
from medvlm.metrics.bootstrap import Undefined
from medvlm import names
from medvlm.tracking.figures import integer_ticks, new_figure, value_ticks, wrap

CI_RESAMPLES = 1000
CI_CONFIDENCE = 0.95
CI_BUDGET = 20_000  # test samples × curves up to which the AUC interval is bootstrapped (about 3 s); beyond, none
ANNOTATE_PERCENT_UP_TO = 15  # classes: count and row % in every cell
ANNOTATE_COUNT_UP_TO = 30  # classes: the count alone, smaller; more classes: colour only


@dataclass(frozen=True)
class MeanAuc:
    """The mean one-vs-rest AUC over `curves` (positive mask, score) on chosen rows: the run's test AUC.
    Computed as the Mann-Whitney statistic from average ranks (equal to `roc_auc_score`, ties counting
    one half) because it is a hundred times faster, and the interval needs a thousand of them."""

    curves: tuple[tuple[np.ndarray, np.ndarray], ...]

    def __call__(self, rows: np.ndarray) -> dict[str, float]:
        aucs = []
        for positive, score in self.curves:
            chosen = positive[rows]
            n_pos = int(chosen.sum())
            n_neg = len(rows) - n_pos
            if not n_pos or not n_neg:
                raise Undefined
            ranks = rankdata(score[rows])
            aucs.append((ranks[chosen].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
        return {"auc": float(np.mean(aucs))}


def auc_interval(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float] | None:
    """The report's percentile bootstrap interval of the mean AUC (same resamples, seed 0), or None where the
    test set is too large to bootstrap at run time (the report gives the interval then)."""
    from medvlm.metrics.bootstrap import bootstrap, percentile_interval  # lazy: only runs with an ROC need it

    n = len(curves[0][0])
    if n * len(curves) > CI_BUDGET:
        return None
    _, values = bootstrap(MeanAuc(tuple(curves)), n, CI_RESAMPLES, 0)
    return percentile_interval(values["auc"], CI_CONFIDENCE)


def _auc_text(value: float, ci: tuple[float, float] | None) -> str:
    interval = f", {100 * CI_CONFIDENCE:g}% CI {ci[0]:.3f}–{ci[1]:.3f}" if ci else ""
    return f"AUC {value:.3f}{interval}"


def roc_figure(y_true: np.ndarray, probs: np.ndarray, kind: LabelKind, class_names: list[str], title: str) -> Figure:
    """Binary: one curve for the positive class (label 1), named, its AUC and bootstrap CI in the legend.
    Multi-class / multi-label: a one-vs-rest curve per class with its AUC; the mean AUC (the run's test_auc)
    heads the legend."""
    if kind == "binary":
        curves = [(class_names[-1], y_true == 1, probs[:, -1])]
    elif kind == "multiclass":
        curves = [(name, y_true == i, probs[:, i]) for i, name in enumerate(class_names)]
    else:
        curves = [(name, y_true[:, i] == 1, probs[:, i], y_true[:, i] >= 0) for i, name in enumerate(class_names)]
        curves = [(name, positive[valid], score[valid]) for name, positive, score, valid in curves]
    curves = [(name, positive, score) for name, positive, score in curves if positive.any() and (~positive).any()]
    many = len(curves) > 6
    fig, ax = new_figure(7.4 if many else 5.5, 5.5)
    if len(curves) > 10:  # the default cycle repeats after ten colours
        ax.set_prop_cycle(color=colormaps["tab20"].colors)
    ci = auc_interval([(p, s) for _, p, s in curves]) if curves and kind != "multilabel" else None
    aucs = []
    for name, positive, score in curves:
        fpr, tpr, _ = roc_curve(positive, score)
        aucs.append(roc_auc_score(positive, score))
        label = (f"positive class: {wrap(name, 28)}\n{_auc_text(aucs[-1], ci)}" if kind == "binary"
                 else f"{wrap(name, 28)} ({_auc_text(aucs[-1], None)})")
        RocCurveDisplay(fpr=fpr, tpr=tpr, roc_auc=aucs[-1]).plot(ax=ax, curve_kwargs={"label": label, "lw": 1.5})
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance (AUC 0.5)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           aspect="equal", title=f"ROC · test\n{title}")
    heading = None if kind == "binary" or not aucs else f"mean one-vs-rest\n{_auc_text(float(np.mean(aucs)), ci)}"
    if many:  # a figure legend beside the axes, which constrained layout makes room for
        ax.get_legend().remove()  # the one each RocCurveDisplay drew inside the axes
        fig.legend(title=heading, fontsize=7, title_fontsize=8, loc="outside right upper")
    else:
        ax.legend(title=heading, fontsize=8, title_fontsize=8, loc="lower right")
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], title: str) -> Figure:
    """Counts and row percentages (share of each true class), coloured by row percentage so rare classes
    read as clearly as common ones. The figure grows with the class count; beyond
    ANNOTATE_PERCENT_UP_TO classes the cells show the count alone, beyond ANNOTATE_COUNT_UP_TO only colour."""
    n = len(class_names)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(n)))
    percent = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cell = 0.62 if n <= ANNOTATE_PERCENT_UP_TO else 0.36
    side = max(4.5, 2.6 + cell * n)
    fig, ax = new_figure(side + 1.2, side)
    names = [wrap(name, 24) for name in class_names]
    display = ConfusionMatrixDisplay(percent, display_labels=names)
    display.plot(ax=ax, include_values=False, cmap="Blues", colorbar=True, xticks_rotation=45)
    display.im_.set_clim(0, 100)
    display.im_.colorbar.set_label("% of the true class (row)")
    ax.tick_params(labelsize=8 if n <= ANNOTATE_PERCENT_UP_TO else 6)
    for label in ax.get_xticklabels():
        label.set(ha="right", rotation_mode="anchor")
    if n <= ANNOTATE_COUNT_UP_TO:
        size = 8 if n <= 8 else 6.5 if n <= ANNOTATE_PERCENT_UP_TO else 5
        for (i, j), count in np.ndenumerate(counts):
            text = f"{count}\n{percent[i, j]:.1f}%" if n <= ANNOTATE_PERCENT_UP_TO else str(count)
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if percent[i, j] > 55 else "black")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"confusion matrix · test ({counts.sum()} samples)\n{title}")
    return fig


def learning_curves_figure(history: list[dict[str, float]], best_epoch: int, metric: str, title: str) -> Figure:
    """Losses (left) and the validation `metric` (right) per epoch, with the epoch whose weights were kept
    (`best_epoch`, 0-based: the lowest validation loss) marked on both; epochs numbered as the metrics' steps."""
    epochs = [names.epoch_number(i) for i in range(len(history))]
    best = names.epoch_number(best_epoch)
    shown = metric in history[0] and metric != names.VAL_LOSS
    fig, axes = new_figure(10 if shown else 5.5, 4, 1, 2 if shown else 1, squeeze=False)
    losses = [key for key in (names.TRAIN_LOSS, names.VAL_LOSS) if key in history[0]]
    panels = [(axes[0][0], losses, "loss")] + ([(axes[0][1], [metric], metric)] if shown else [])
    for ax, keys, ylabel in panels:
        for key in keys:
            values = [row[key] for row in history]
            ax.plot(epochs, values, marker="o", ms=3, label=key)
            if names.group_of(key) != names.TRAIN:  # the kept epoch is marked on what chose it and what it scored
                ax.plot(best, values[best_epoch], "*", ms=12, color=ax.lines[-1].get_color())
        ax.axvline(best, color="grey", ls=":", lw=1, label=f"best epoch {best} (lowest val loss)")
        integer_ticks(ax.xaxis)
        ax.set(xlabel="epoch", ylabel=ylabel, xlim=(epochs[0] - 0.5, epochs[-1] + 0.5))
        ax.legend(fontsize=8)
    fig.suptitle(f"learning curves\n{title}")
    return fig


def recall_figure(curve: pd.DataFrame, title: str) -> Figure:
    """Recall@k per direction on a log k axis, ticks at the k values measured, labelled as integers."""
    fig, ax = new_figure(6.5, 4.2)
    for direction, part in curve.groupby("direction"):
        ax.plot(part["k"], part["recall"], marker="o", label=direction.replace("_to_", " → "))
    ax.set(xscale="log", xlabel="k", ylabel="recall@k", ylim=(0, 1.02), title=f"recall@k · test\n{title}")
    ks = sorted(curve["k"].unique().tolist())
    value_ticks(ax.xaxis, ks)
    if len(ks) > 8:  # up to 17 k values on a log axis: the larger ones would touch
        ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    return fig
