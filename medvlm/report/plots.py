"""The report's figures: medical − general gap heatmaps, the ablation curve and the stability plot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medvlm.report.tables import TASK_NAMES, metric_name, slug
from medvlm.studies.stability import std_figure
from medvlm.tracking.figures import figure_path, fraction_axis, new_figure, wrap


def gap_heatmaps(gaps: pd.DataFrame, figure_format: str) -> dict[str, object]:
    """One heatmap per task and (medical strategy, general strategy): model pairs × test sets,
    annotated with the gap, * where its interval excludes 0, and whether the dataset is ID/OOD for the medical model."""
    figures = {}
    if gaps.empty:
        return figures
    for (task, s_med, s_gen), part in gaps.groupby(["task", "a_strategy", "b_strategy"], sort=False):
        pairs = list(dict.fromkeys(part["a_model"] + " − " + part["b_model"]))
        testsets = sorted(part["testset"].unique())
        values = np.full((len(pairs), len(testsets)), np.nan)
        notes = [[""] * len(testsets) for _ in pairs]
        for row in part.itertuples():
            i, j = pairs.index(f"{row.a_model} − {row.b_model}"), testsets.index(row.testset)
            values[i, j] = row.difference
            star = "*" if row.significant else ""
            notes[i][j] = f"{row.difference:+.3f}{star}\n{row.medical_in_domain}"
        limit = max(np.nanmax(np.abs(values)), 1e-3)
        width = max(5.5, 3.5 + 1.4 * len(testsets))
        fig, ax = new_figure(width, 2.0 + 0.7 * len(pairs))
        image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i, j in np.ndindex(values.shape):
            if notes[i][j]:
                dark = abs(values[i, j]) > 0.6 * limit
                ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(testsets)), testsets, rotation=20, ha="right", fontsize=8)
        ax.set_yticks(range(len(pairs)), [wrap(p, 30) for p in pairs], fontsize=8)
        metric = metric_name(part["metric"].iloc[0])
        ax.set_title(f"{TASK_NAMES[task]}: medical ({s_med}) − general ({s_gen})\n{metric} gap, * interval excludes 0, "
                     "ID/OOD of the medical model", fontsize=9)
        fig.colorbar(image, ax=ax, label=f"{metric} gap")
        figures[figure_path(f"plots/gap_{task}_{slug(s_med)}_vs_{slug(s_gen)}", figure_format)] = fig
    return figures


def ablation_curve(data: pd.DataFrame):
    """Headline metric against training fraction (log x), one line per model · strategy, one panel per
    test set; error bars are the bootstrap intervals (±std where a cell has runs but no interval)."""
    testsets = sorted(data["testset"].unique())
    fig, axes = new_figure(5.5 * len(testsets), 4.2, 1, len(testsets), squeeze=False)
    for ax, testset in zip(axes[0], testsets):
        part = data[data["testset"] == testset].sort_values("train_fraction")
        for (model, variant, strategy), line in part.groupby(["model", "variant", "strategy"]):
            has_ci = line["ci_low"].notna()
            low = np.where(has_ci, line["value"] - line["ci_low"], np.nan_to_num(line["std"]))
            high = np.where(has_ci, line["ci_high"] - line["value"], np.nan_to_num(line["std"]))
            label = wrap(f"{model}{f' [{variant}]' if variant else ''} · {strategy}", 40)
            ax.errorbar(line["train_fraction"], line["value"], yerr=[low, high], marker="o", capsize=3, label=label)
        fraction_axis(ax, sorted(part["train_fraction"].unique()))
        ax.set(title=testset, ylabel=metric_name(part["metric"].iloc[0]))
        ax.legend(fontsize=7)
    fig.suptitle("error bars: bootstrap interval (± std across runs where a cell has no interval)", fontsize=9)
    return fig


def stability_plot(stds: pd.DataFrame):
    """The paper's Figure 2 (std across runs per model and strategy), drawn by the stability study's own plot."""
    return std_figure(stds, stds["metric"].iloc[0])
