"""Data-fraction ablations: the same run over training-data fractions (the paper's Table 6).

The fractions are a `train_fraction` grid axis (see `spec.expand_cells`); each run subsamples its
train split, stratified by label with a fixed seed (`medvlm.data.subsample`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def fraction_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Table 6: one row per (dataset, model, strategy), one column per fraction, "mean ± std" cells."""
    rows = table[table["metric"] == metric].copy()
    rows["cell"] = [f"{m:.4f}" if not np.isfinite(s) else f"{m:.4f} ± {s:.4f}" for m, s in zip(rows["mean"], rows["std"])]
    wide = rows.pivot_table(index=["dataset", "model", "strategy"], columns="train_fraction", values="cell", aggfunc="first")
    wide.columns = [f"{100 * f:g}%" for f in wide.columns]
    return wide.reset_index()


def fraction_figure(table: pd.DataFrame, metric: str):
    """`metric` against the training fraction (log x), one line per model and strategy, one panel per dataset."""
    from medvlm.tracking.figures import fraction_axis, new_figure, wrap  # lazy: matplotlib loads only when drawn

    rows = table[table["metric"] == metric].sort_values("train_fraction")
    datasets = sorted(rows["dataset"].unique())
    fig, axes = new_figure(5.5 * len(datasets), 4.2, 1, len(datasets), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = rows[rows["dataset"] == dataset]
        for (model, strategy), line in part.groupby(["model", "strategy"]):
            ax.errorbar(line["train_fraction"], line["mean"], yerr=np.nan_to_num(line["std"]), marker="o",
                        capsize=3, label=wrap(f"{model} · {strategy}", 40))
        fraction_axis(ax, sorted(part["train_fraction"].unique()))
        ax.set(title=dataset, ylabel=metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"{metric} against training data (mean ± std across runs)")
    return fig
