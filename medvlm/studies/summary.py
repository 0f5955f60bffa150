"""A study's summary, recomputed from its finished child runs and logged on the parent run.

The numbers come from the children's `test_*` metrics in MLflow, not from any one worker's
memory, so the summary is right however many workers ran the trials, and rewriting it (the
last worker to finish, or `--summarize-only`) is idempotent.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from medvlm.catalog import TASKS
from medvlm.studies.ablation import fraction_figure, fraction_table
from medvlm.studies.stability import std_figure
from medvlm.names import TEST, in_group

PRIMARY_METRIC = {name: task.primary_metric for name, task in TASKS.items()}
STATS = ("mean", "std", "min", "max")
KEYS = ["group", "model", "dataset", "task", "strategy", "train_fraction"]


def child_runs(client: MlflowClient, parent_id: str, status: str | None = "FINISHED") -> pd.DataFrame:
    """One row per child run of `parent_id`: run id, status, trial, cell keys and test metrics."""
    experiment = client.get_run(parent_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_id}'" + (f" and attributes.status = '{status}'" if status else "")
    rows, token = [], None
    while True:
        page = client.search_runs([experiment], filter_string=query, max_results=1000, page_token=token)
        for run in page:
            tags, params = run.data.tags, run.data.params
            group = tags.get("medvlm.group") or " · ".join(params.get(k, "?") for k in ("model", "dataset", "strategy"))
            rows.append({"run_id": run.info.run_id, "status": run.info.status, "trial": int(tags.get("medvlm.trial", -1)),
                         "group": group, "model": params.get("model", ""),
                         "dataset": params.get("dataset", ""), "task": params.get("task", ""),
                         "strategy": params.get("strategy", ""), "train_fraction": float(params.get("train_fraction", 1.0)),
                         **{k: v for k, v in run.data.metrics.items() if in_group(k, TEST)}})
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run_id", "status", "trial", *KEYS])


def summary_table(children: pd.DataFrame) -> pd.DataFrame:
    """n, mean, std (sample, ddof=1; NaN for n=1), min and max of every test metric, per group."""
    columns = [*KEYS, "metric", "n", *STATS]
    metrics = [c for c in children.columns if in_group(c, TEST)]
    if children.empty or not metrics:
        return pd.DataFrame(columns=columns)
    long = children.melt(id_vars=KEYS, value_vars=metrics, var_name="metric").dropna(subset=["value"])
    table = long.groupby([*KEYS, "metric"], sort=False)["value"].agg(
        n="count", mean="mean", std=lambda v: v.std(ddof=1), min="min", max="max").reset_index()
    return table[columns]


def primary_metric(table: pd.DataFrame) -> str:
    """The metric the plots show: the task's headline metric, else the first one logged."""
    available = sorted(table["metric"].unique())
    tasks = table["task"].unique().tolist()
    preferred = PRIMARY_METRIC.get(tasks[0]) if len(tasks) == 1 else None
    return preferred if preferred in available else available[0]


def by_task(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(file-name suffix, rows) per task: a study over several tasks (the paper's Figure 2: VQA and
    retrieval) gets each task's headline metric in its own plots; a one-task study keeps plain names."""
    tasks = table["task"].unique().tolist()
    return [("" if len(tasks) == 1 else f"_{task}", table[table["task"] == task]) for task in tasks]


def metric_key(group: str, name: str) -> str:
    """An MLflow-safe parent metric name: summary/<group parts>/<name>."""
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "_", part) for part in group.split(" · ")]
    return "/".join(["summary", *parts, name])


def box_figure(children: pd.DataFrame, metric: str):
    """Per-run values of `metric` per group: a box plot with every run drawn as a point."""
    from medvlm.tracking.figures import new_figure, wrap  # lazy: matplotlib loads only when a figure is drawn

    runs = children.dropna(subset=[metric])
    datasets = sorted(runs["dataset"].unique())
    fig, axes = new_figure(max(5.0, 1.3 * runs["group"].nunique()), 4.0 * len(datasets), len(datasets), 1, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, dataset in zip(axes[:, 0], datasets):
        part = runs[runs["dataset"] == dataset]
        groups = list(dict.fromkeys(part["group"]))
        values = [part[part["group"] == g][metric].to_numpy() for g in groups]
        ax.boxplot(values, showfliers=False)
        for i, v in enumerate(values, 1):
            ax.plot(i + rng.uniform(-0.12, 0.12, len(v)), v, "o", ms=3, alpha=0.7)
        ax.set_xticks(range(1, len(groups) + 1), [wrap(g.replace(f" · {dataset}", ""), 18) for g in groups], fontsize=7)
        ax.set(title=dataset, ylabel=metric)
    fig.suptitle(f"{metric} of every run (points) per model · strategy")
    return fig


def log_summary(client: MlflowClient, parent_id: str, kind: str, children: pd.DataFrame, table: pd.DataFrame,
                counts: dict[str, int], figure_format: str) -> None:
    """Metrics, tables and plots of the summary on the parent run (overwriting an earlier summary)."""
    from medvlm.tracking.figures import figure_path, log_figures  # lazy: matplotlib loads only when a figure is drawn

    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{state}", float(n), now, 0) for state, n in counts.items()]
    for row in table.itertuples():
        metrics += [Metric(metric_key(row.group, f"{row.metric}_{stat}"), float(getattr(row, stat)), now, 0)
                    for stat in ("n", *STATS) if np.isfinite(getattr(row, stat))]
    for start in range(0, len(metrics), 1000):
        client.log_batch(parent_id, metrics=metrics[start:start + 1000])
    log_frame(client, parent_id, table, "summary/summary")
    if table.empty:
        return
    figures = {}
    for suffix, rows in by_task(table):
        metric = primary_metric(rows)
        figures[figure_path(f"summary/runs_box{suffix}", figure_format)] = box_figure(children[children["task"] == rows["task"].iloc[0]], metric)
        if kind == "stability":
            figures[figure_path(f"summary/std_per_model_strategy{suffix}", figure_format)] = std_figure(rows, metric)
        if kind == "ablation":
            log_frame(client, parent_id, fraction_table(rows, metric), f"summary/fraction_table{suffix}")
            figures[figure_path(f"summary/metric_vs_fraction{suffix}", figure_format)] = fraction_figure(rows, metric)
    log_figures(figures, client, parent_id)


def log_frame(client: MlflowClient, run_id: str, frame: pd.DataFrame, stem: str) -> None:
    """`stem`.json (mlflow.log_table's "split" layout) and `stem`.txt. Not log_table: it appends
    to an existing file, and a summary must be rewritable."""
    client.log_text(run_id, frame.to_json(orient="split", index=False), f"{stem}.json")
    client.log_text(run_id, frame.to_string(index=False), f"{stem}.txt")


def format_summary(kind: str, table: pd.DataFrame) -> str:
    """The console view: the headline metric per group (the Table-6 layout for ablations)."""
    if table.empty:
        return "no finished trials yet"
    parts = []
    for _, task_rows in by_task(table):
        metric = primary_metric(task_rows)
        if kind == "ablation":
            parts.append(f"{metric} by training fraction\n" + fraction_table(task_rows, metric).to_string(index=False))
            continue
        rows = task_rows[task_rows["metric"] == metric]
        view = pd.DataFrame({"group": rows["group"], "n": rows["n"],
                             f"{metric} mean ± std": [f"{m:.4f} ± {s:.4f}" for m, s in zip(rows["mean"], rows["std"])],
                             "min": rows["min"].map("{:.4f}".format), "max": rows["max"].map("{:.4f}".format)})
        parts.append(view.to_string(index=False))
    return "\n\n".join(parts)
