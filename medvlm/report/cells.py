"""Runs grouped into table cells, with bootstrap replicates and paired comparisons.

A cell is one (task, test set, model, strategy, training fraction, study variant); its runs are
replicates (seeds, perturbed hyperparameters). Its value is the logged test metric, or their mean
over runs, never anything recomputed. Each run's per-sample table is bootstrapped once (see
`bootstrap`), so any grouping of runs into cells reuses the same replicates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from mlflow.tracking import MlflowClient

from medvlm.catalog import STRATEGY_KINDS
from medvlm.progress import tracked
from medvlm.metrics import bootstrap
from medvlm.report.domains import Domain, dataset_modality, domain_of, model_coverage
from medvlm.report.samples import SampleSet, load_samples
from medvlm.report.select import RunRecord

STRATEGY_ORDER = tuple(STRATEGY_KINDS)


@dataclass
class RunSamples:
    """Per-run bootstrap replicates, computed once per run and shared resamples per test set."""

    resamples: int
    seed: int
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    testset_of: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    redrawn: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, client: MlflowClient, runs: Iterable[RunRecord], resamples: int, seed: int,
           workers: int = 1) -> RunSamples:
        store = cls(resamples, seed)
        drawn: dict[str, bootstrap.Resamples] = {}
        pool = bootstrap.process_pool(workers)
        runs = list(runs)
        try:
            for run in tracked(runs, "bootstrap intervals (runs)", len(runs)):
                samples = load_samples(client, run.experiment_id, run.run_id, run.task)
                why = samples if isinstance(samples, str) else samples.check(run.metrics)
                if why:
                    store.missing[run.run_id] = why
                    continue
                store.add(run.run_id, samples, drawn, pool)
        finally:
            if pool is not None:
                pool.shutdown()
        return store

    def add(self, run_id: str, samples: SampleSet, drawn: dict[str, bootstrap.Resamples], pool=None) -> None:
        if samples.testset in drawn:
            values = bootstrap.replicates(samples.statistic, drawn[samples.testset], pool)
        else:
            drawn[samples.testset], values = bootstrap.bootstrap(samples.statistic, samples.n, self.resamples,
                                                                 self.seed, pool)
            self.redrawn[samples.testset] = drawn[samples.testset].redrawn
        self.replicates[run_id] = values
        self.testset_of[run_id] = samples.testset


@dataclass
class Cell:
    task: str
    testset: str
    dataset: str
    model: str
    domain: str
    strategy: str
    train_fraction: float
    variant: str
    runs: list[RunRecord]
    data_modality: str
    in_domain: Domain

    @property
    def label(self) -> str:
        return f"{self.model} [{self.variant}]" if self.variant else self.model

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def value(self, metric: str) -> float | None:
        """The logged metric (one run) or its mean over runs; None when no run logged it."""
        values = self.values(metric)
        return float(np.mean(values)) if values else None

    def std(self, metric: str) -> float:
        """Sample std (ddof=1) over runs; NaN for one run."""
        values = self.values(metric)
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def cell_key(run: RunRecord) -> tuple:
    return run.task, run.testset, run.model, run.strategy, run.train_fraction, run.variant


def build_cells(runs: list[RunRecord]) -> list[Cell]:
    """Runs grouped into cells, each cell's runs in trial order (so stability perturbations line up)."""
    grouped: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        grouped[cell_key(run)].append(run)
    cells = []
    for (task, testset, model, strategy, fraction, variant), members in grouped.items():
        members = sorted(members, key=lambda r: (r.trial, r.start_time, r.run_id))
        first = members[0]
        modality = dataset_modality(task, first.dataset, first.params.get("subset", ""))
        cells.append(Cell(task, testset, first.dataset, model, first.domain, strategy, fraction, variant, members,
                          modality, domain_of(model_coverage(model), modality)))
    return sorted(cells, key=lambda c: (c.task, c.testset, c.model, c.variant, strategy_rank(c.strategy),
                                        c.train_fraction))


def strategy_rank(strategy: str) -> int:
    return STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)


@dataclass
class Uncertainty:
    """Intervals and paired tests over cells, from the per-run replicates."""

    samples: RunSamples
    confidence: float

    def why_none(self, cell: Cell) -> str:
        """"" when the cell has replicates, else why not."""
        for run in cell.runs:
            if run.run_id in self.samples.missing:
                return f"run {run.run_id[:8]}: {self.samples.missing[run.run_id]}"
        return ""

    def replicates(self, cell: Cell, metric: str) -> np.ndarray | None:
        if self.why_none(cell):
            return None
        per_run = [self.samples.replicates[r.run_id].get(metric) for r in cell.runs]
        if any(v is None for v in per_run):
            return None
        return bootstrap.pooled(per_run, self.samples.seed)

    def interval(self, cell: Cell, metric: str) -> tuple[float, float] | None:
        values = self.replicates(cell, metric)
        return None if values is None else bootstrap.percentile_interval(values, self.confidence)

    def testset_id(self, cell: Cell) -> str | None:
        """The per-sample test set all the cell's runs share, or None."""
        ids = {self.samples.testset_of.get(r.run_id) for r in cell.runs}
        return ids.pop() if len(ids) == 1 and None not in ids else None

    def compare(self, a: Cell, b: Cell, metric: str) -> bootstrap.Difference | str:
        """Paired bootstrap of a - b, or why there is none."""
        a_value, b_value = a.value(metric), b.value(metric)
        if a_value is None or b_value is None:
            return f"{metric} not logged"
        reasons = [w for w in (self.why_none(a), self.why_none(b)) if w]
        if reasons:
            return reasons[0]
        if self.testset_id(a) is None or self.testset_id(a) != self.testset_id(b):
            return "not scored on the same test samples, so not paired"
        a_reps, b_reps = self.replicates(a, metric), self.replicates(b, metric)
        if a_reps is None or b_reps is None:
            return f"{metric} has no per-sample replicates"
        return bootstrap.paired_difference(a_value, b_value, a_reps, b_reps, self.confidence)
