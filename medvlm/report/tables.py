"""The report's tables: paper layouts (markdown view) over tidy numbers (CSV data).

Every number shown is a logged test metric (one run) or a mean of logged metrics (several runs);
intervals and differences come from `cells.Uncertainty`. A cell no run filled shows "—" and is
listed as missing. In each fine-tuning table the best value is **bold** and the second best
_italic_. The CSV of a table holds one row per cell and metric, with the full-precision value,
std, interval bounds and the run ids behind it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from medvlm.catalog import TASKS
from medvlm.metrics.bootstrap import Difference
from medvlm.report.cells import Cell, Uncertainty, strategy_rank
from medvlm.report.domains import domain_of, model_coverage
from medvlm.names import bare, test

MISSING = "—"
PRIMARY = {name: task.primary_metric for name, task in TASKS.items()}
ZERO_SHOT_METRICS = {name: task.zero_shot_metrics for name, task in TASKS.items() if task.zero_shot_metrics}
ZERO_SHOT_SHOWN = {"classification": 4, "retrieval": 3}
FINETUNE_METRICS = {name: task.headline_metrics for name, task in TASKS.items()}
# test_auc_hard is the MIDL paper code's AUC of hard predictions: only for comparison with its tables
METRIC_NAMES = {test(k): v for k, v in {
    "auc": "AUC", "auc_hard": "AUC (hard, paper code)", "acc": "ACC", "f1": "F1", "acc_open": "ACC open",
    "acc_closed": "ACC closed", "f1_weighted": "F1 (weighted)", "closed_acc": "closed ACC (generated)",
    "open_recall": "open token recall"}.items()}
METRIC_NAMES.update({test(f"{d}_R{k}"): f"{a} R@{k}" for d, a in (("image_to_text", "I→T"), ("text_to_image", "T→I"))
                     for k in (1, 5, 10)})
TASK_NAMES = {name: task.title for name, task in TASKS.items()}


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, bare(metric))


def fraction_name(fraction: float) -> str:
    return f"{100 * fraction:g}%"


@dataclass
class Table:
    """One table: `view` (strings) becomes markdown, `data` (numbers) becomes CSV."""

    name: str
    title: str
    view: pd.DataFrame
    data: pd.DataFrame
    note: str = ""
    text: str = ""  # markdown shown instead of `view` (the recommendations read better as prose)


@dataclass
class Missing:
    """Cells an expected grid has no finished run for."""

    cells: list[str] = field(default_factory=list)

    def add(self, task: str, testset: str, label: str, strategy: str, fraction: float = 1.0) -> None:
        where = f" · {fraction_name(fraction)} of train" if fraction != 1.0 else ""
        line = f"{TASK_NAMES.get(task, task)} · {testset} · {label} · {strategy}{where}"
        if line not in self.cells:
            self.cells.append(line)


def cell_text(cell: Cell | None, metric: str, unc: Uncertainty) -> str:
    """"0.812 [0.751, 0.868]"; with several runs "0.812 ± 0.021 [0.779, 0.845] (n=9)"; "—" if missing."""
    value = None if cell is None else cell.value(metric)
    if value is None:
        return MISSING
    n = len(cell.values(metric))
    text = f"{value:.3f}" + (f" ± {cell.std(metric):.3f}" if n > 1 else "")
    interval = unc.interval(cell, metric)
    if interval is not None:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text + (f" (n={n})" if n > 1 else "")


def cell_row(cell: Cell, metric: str, unc: Uncertainty, **extra) -> dict:
    values = cell.values(metric)
    interval = unc.interval(cell, metric)
    return {"task": cell.task, "testset": cell.testset, "model": cell.model, "variant": cell.variant,
            "domain": cell.domain, "in_domain": cell.in_domain, "strategy": cell.strategy,
            "train_fraction": cell.train_fraction, "metric": metric, "n": len(values),
            "value": cell.value(metric), "std": cell.std(metric),
            "min": min(values) if values else math.nan, "max": max(values) if values else math.nan,
            "ci_low": interval[0] if interval else math.nan, "ci_high": interval[1] if interval else math.nan,
            "run_ids": ";".join(r.run_id for r in cell.runs), **extra}


def interval_note(cells: Iterable[Cell], metrics: Iterable[str], unc: Uncertainty) -> str:
    """Why cells carry no interval, once per reason."""
    reasons = {}
    metrics = list(metrics)
    for cell in cells:
        why = unc.why_none(cell)
        if why:
            reasons.setdefault(why.split(": ", 1)[-1], cell)
        elif any(cell.value(m) is not None and unc.interval(cell, m) is None for m in metrics):
            reasons.setdefault("a metric has no per-sample replicates", cell)
    return "; ".join(f"no interval where {reason} (e.g. {c.label} · {c.testset} · {c.strategy})"
                     for reason, c in reasons.items())


class Grid:
    """Cells by position, and the grid the report expects: every model × strategy × test set of a task."""

    def __init__(self, cells: list[Cell]):
        self.cells = {(c.task, c.testset, c.model, c.variant, c.strategy, c.train_fraction): c for c in cells}
        self.all = cells

    def get(self, task: str, testset: str, row: tuple[str, str], strategy: str, fraction: float = 1.0) -> Cell | None:
        return self.cells.get((task, testset, *row, strategy, fraction))

    def tasks(self) -> list[str]:
        return sorted({c.task for c in self.all}, key=list(PRIMARY).index)

    def testsets(self, task: str) -> list[str]:
        return sorted({c.testset for c in self.all if c.task == task})

    def rows(self, task: str) -> list[tuple[str, str]]:
        """(model, variant) rows of a task, general models first."""
        domains = {(c.model, c.variant): c.domain for c in self.all if c.task == task}
        return sorted(domains, key=lambda row: (domains[row] != "general", row))

    def strategies(self, task: str) -> list[str]:
        return sorted({c.strategy for c in self.all if c.task == task}, key=strategy_rank)

    def label(self, row: tuple[str, str]) -> str:
        return f"{row[0]} [{row[1]}]" if row[1] else row[0]

    def facts(self, task: str, row: tuple[str, str], testset: str) -> tuple[str, str]:
        """(domain, ID/OOD) of a row's model on a test set."""
        domain = next(c.domain for c in self.all if (c.task, c.model, c.variant) == (task, *row))
        modality = next(c.data_modality for c in self.all if (c.task, c.testset) == (task, testset))
        return domain, domain_of(model_coverage(row[0]), modality)


def zero_shot_tables(grid: Grid, unc: Uncertainty, missing: Missing) -> list[Table]:
    """Per task: rows test set × model, columns the task's headline metrics (zero-shot runs)."""
    tables = []
    for task, metrics in ZERO_SHOT_METRICS.items():
        if "zeroshot" not in grid.strategies(task):
            continue
        shown = metrics[:ZERO_SHOT_SHOWN[task]]
        view, data, cells = [], [], []
        for testset in grid.testsets(task):
            for row in grid.rows(task):
                cell = grid.get(task, testset, row, "zeroshot")
                domain, in_domain = grid.facts(task, row, testset)
                view.append({"dataset": testset, "model": grid.label(row), "domain": domain, "ID/OOD": in_domain,
                             **{metric_name(m): cell_text(cell, m, unc) for m in shown}})
                if cell is None:
                    missing.add(task, testset, grid.label(row), "zeroshot")
                    continue
                cells.append(cell)
                data += [cell_row(cell, m, unc) for m in metrics if cell.value(m) is not None]
        title = f"Zero-shot {TASK_NAMES[task]}" + (" (image → text)" if task == "retrieval" else "")
        tables.append(Table(f"zeroshot_{task}", title, pd.DataFrame(view), pd.DataFrame(data),
                            interval_note(cells, shown, unc)))
    return tables


def ranks(values: dict[str, float]) -> dict[str, str]:
    """"best" for the highest value(s), "second" for the next distinct one."""
    distinct = sorted(set(values.values()), reverse=True)
    names = dict(zip(distinct[:2], ("best", "second")))
    return {key: names.get(value, "") for key, value in values.items()}


def marked(text: str, rank: str) -> str:
    return {"best": f"**{text}**", "second": f"_{text}_"}.get(rank, text)


def finetune_tables(grid: Grid, unc: Uncertainty, missing: Missing) -> list[Table]:
    """Per task, test set and metric: models (rows) × strategies (columns) on the full training set."""
    tables = []
    for task in grid.tasks():
        strategies = grid.strategies(task)
        if strategies == ["zeroshot"] and task in ZERO_SHOT_METRICS:
            continue  # the zero-shot table shows them
        for testset, metric in itertools.product(grid.testsets(task), FINETUNE_METRICS.get(task, (PRIMARY[task],))):
            found = {(row, s): grid.get(task, testset, row, s) for row in grid.rows(task) for s in strategies}
            values = {key: c.value(metric) for key, c in found.items() if c is not None and c.value(metric) is not None}
            if not values:
                continue
            rank = ranks(values)
            view, data = [], []
            for row in grid.rows(task):
                domain, in_domain = grid.facts(task, row, testset)
                line = {"model": grid.label(row), "domain": domain, "ID/OOD": in_domain}
                for s in strategies:
                    cell = found[(row, s)]
                    line[s] = marked(cell_text(cell, metric, unc), rank.get((row, s), ""))
                    if cell is None:
                        missing.add(task, testset, grid.label(row), s)
                    elif cell.value(metric) is not None:
                        data.append(cell_row(cell, metric, unc, mark=rank[(row, s)]))
                view.append(line)
            cells = [c for c in found.values() if c is not None]
            tables.append(Table(f"finetune_{task}_{slug(testset)}_{bare(metric)}",
                                f"{TASK_NAMES[task]} · {testset} · {metric_name(metric)} (models × strategies)",
                                pd.DataFrame(view), pd.DataFrame(data), interval_note(cells, [metric], unc)))
    return tables


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)


def ablation_table(cells: list[Cell], unc: Uncertainty, missing: Missing) -> Table | None:
    """The headline metric per training fraction, one row per (test set, model, strategy) run at >= 2 fractions."""
    lines: dict[tuple, dict[float, Cell]] = {}
    for c in cells:
        lines.setdefault((c.task, c.testset, c.model, c.variant, c.strategy), {})[c.train_fraction] = c
    lines = {k: v for k, v in lines.items() if len(v) > 1}
    if not lines:
        return None
    view, data = [], []
    fractions = sorted({f for by_fraction in lines.values() for f in by_fraction})
    for (task, testset, model, variant, strategy), by_fraction in sorted(lines.items()):
        metric = PRIMARY[task]
        label = f"{model} [{variant}]" if variant else model
        line = {"task": TASK_NAMES[task], "dataset": testset, "model": label, "strategy": strategy,
                "metric": metric_name(metric)}
        for f in fractions:
            cell = by_fraction.get(f)
            line[fraction_name(f)] = cell_text(cell, metric, unc)
            if cell is None:
                missing.add(task, testset, label, strategy, f)
            elif cell.value(metric) is not None:
                data.append(cell_row(cell, metric, unc))
        view.append(line)
    used = [c for by_fraction in lines.values() for c in by_fraction.values()]
    return Table("ablation", "Training-data fraction ablation", pd.DataFrame(view), pd.DataFrame(data),
                 interval_note(used, [PRIMARY[c.task] for c in used], unc))


def stability_table(cells: list[Cell], unc: Uncertainty) -> Table | None:
    """Runs with perturbed hyperparameters: n, mean ± std, min, max and the mean's interval per cell."""
    rows = [c for c in cells if len(c.runs) > 1]
    if not rows:
        return None
    view, data = [], []
    for c in rows:
        metric = PRIMARY[c.task]
        data.append(cell_row(c, metric, unc))
        interval = unc.interval(c, metric)
        view.append({"task": TASK_NAMES[c.task], "dataset": c.testset, "model": c.label, "strategy": c.strategy,
                     "metric": metric_name(metric), "n": len(c.values(metric)),
                     "mean ± std": f"{c.value(metric):.3f} ± {c.std(metric):.3f}",
                     "min": f"{min(c.values(metric)):.3f}", "max": f"{max(c.values(metric)):.3f}",
                     f"{100 * unc.confidence:g}% CI of mean": MISSING if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"})
    note = "std is the sample std (ddof=1) over runs; the interval resamples test samples and runs (two-level bootstrap)"
    extra = interval_note(rows, [PRIMARY[c.task] for c in rows], unc)
    return Table("stability", "Stability across perturbed runs", pd.DataFrame(view), pd.DataFrame(data),
                 "; ".join(filter(None, [note, extra])))


def difference_text(diff: Difference | str) -> str:
    if isinstance(diff, str):
        return f"n/a ({diff})"
    return f"{diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}], p={p_text(diff.p)}"


def p_text(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def difference_row(a: Cell, b: Cell, metric: str, diff: Difference | str) -> dict:
    base = {"task": a.task, "testset": a.testset, "metric": metric, "a_model": a.label, "a_strategy": a.strategy,
            "b_model": b.label, "b_strategy": b.strategy, "a_value": a.value(metric), "b_value": b.value(metric)}
    if isinstance(diff, str):
        return {**base, "difference": _diff(a, b, metric), "ci_low": math.nan, "ci_high": math.nan,
                "p_value": math.nan, "significant": False, "paired": False, "note": diff}
    return {**base, "difference": diff.estimate, "ci_low": diff.low, "ci_high": diff.high, "p_value": diff.p,
            "significant": diff.significant, "paired": True, "note": ""}


def _diff(a: Cell, b: Cell, metric: str) -> float:
    va, vb = a.value(metric), b.value(metric)
    return math.nan if va is None or vb is None else va - vb


def comparisons_table(grid: Grid, unc: Uncertainty) -> Table | None:
    """Every pair of cells on the same test set (full training data), headline metric. The markdown
    shows pairs of models under the same strategy; the CSV has every pair."""
    data, view = [], []
    for task in grid.tasks():
        metric = PRIMARY[task]
        for testset in grid.testsets(task):
            cells = [c for c in grid.all if (c.task, c.testset, c.train_fraction) == (task, testset, 1.0)
                     and c.value(metric) is not None]
            for a, b in itertools.combinations(cells, 2):
                diff = unc.compare(a, b, metric)
                data.append(difference_row(a, b, metric, diff))
                if a.strategy == b.strategy:
                    view.append({"task": TASK_NAMES[task], "dataset": testset, "metric": metric_name(metric),
                                 "strategy": a.strategy, "A": a.label, "B": b.label, "A − B": difference_text(diff)})
    if not data:
        return None
    return Table("comparisons", "Paired comparisons (same test set, same strategy)", pd.DataFrame(view),
                 pd.DataFrame(data), "the CSV lists every pair, across strategies too")


def gap_data(grid: Grid, unc: Uncertainty) -> pd.DataFrame:
    """Medical minus general, headline metric, for every (medical strategy, general strategy) pair and test set."""
    rows = []
    for task in grid.tasks():
        metric = PRIMARY[task]
        full = [c for c in grid.all if c.task == task and c.train_fraction == 1.0 and c.value(metric) is not None]
        medical = [c for c in full if c.domain == "medical"]
        general = [c for c in full if c.domain == "general"]
        for m, g in itertools.product(medical, general):
            if m.testset != g.testset:
                continue
            row = difference_row(m, g, metric, unc.compare(m, g, metric))
            rows.append({**row, "medical_in_domain": m.in_domain})
    return pd.DataFrame(rows)


def gap_table(gaps: pd.DataFrame) -> Table | None:
    """The markdown view of the gaps where both models use the same strategy (the CSV has every pair)."""
    if gaps.empty:
        return None
    same = gaps[gaps["a_strategy"] == gaps["b_strategy"]]
    view = pd.DataFrame({
        "task": same["task"].map(TASK_NAMES), "dataset": same["testset"], "strategy": same["a_strategy"],
        "medical − general": same["a_model"] + " − " + same["b_model"],
        "medical ID/OOD": same["medical_in_domain"],
        "gap": [gap_text(r) for r in same.itertuples()],
    })
    return Table("gaps", "Medical minus general (same strategy)", view, gaps,
                 "heatmaps per strategy pair are in plots/; * marks a gap whose interval excludes 0")


def gap_text(row) -> str:
    if not row.paired:
        return f"{row.difference:+.3f} (unpaired: {row.note})"
    star = "*" if row.significant else ""
    return f"{row.difference:+.3f}{star} [{row.ci_low:+.3f}, {row.ci_high:+.3f}], p={p_text(row.p_value)}"


def stds(cells: list[Cell]) -> pd.DataFrame:
    """Per cell with several runs: dataset, model, strategy, metric, n, mean, std (the stability plot's input)."""
    rows = [{"dataset": c.testset, "model": c.label, "strategy": c.strategy, "metric": PRIMARY[c.task],
             "n": len(c.runs), "mean": c.value(PRIMARY[c.task]), "std": c.std(PRIMARY[c.task])}
            for c in cells if len(c.runs) > 1 and c.value(PRIMARY[c.task]) is not None]
    return pd.DataFrame(rows)
