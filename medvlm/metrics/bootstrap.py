"""Percentile bootstrap intervals and paired bootstrap tests over a test set's samples.

Exact procedure (so anyone can recompute an interval with numpy and the same seed):

1. Resample rows. For a test set of n samples, `default_rng(seed).integers(0, n, (B, n))` gives B
   resamples with replacement. A resample on which a metric is undefined (AUC with one class
   absent, open-question accuracy with no open question) is *redrawn*: row b gets
   `rng.integers(0, n, n)` from the same generator, in order b = 0..B-1, until it is defined. The
   number of redraws is reported. Redrawing conditions on the test set's class mix, which is what
   the logged metric also assumed (it would have failed otherwise).
2. A run's replicates are its metric on each resample. Runs on the same test set (identical
   labels, hence the same n and the same rows) share the resamples, so differences are paired.
3. A cell with k >= 2 runs (seeds, perturbed hyperparameters) is a two-level bootstrap: for each
   resample b, k runs are drawn with replacement, `default_rng([seed, k]).integers(0, k, (B, k))`,
   and the cell's replicate is the mean of their replicates at b. Its interval then covers
   run-to-run (training) variation as well as test-set sampling. Every cell with k runs gets the
   same draws, so runs in the same trial position (one stability perturbation) stay paired.
4. Interval: the (1 - confidence)/2 and (1 + confidence)/2 percentiles of the replicates
   (numpy's default linear interpolation).
5. Paired difference A - B: the replicates d_b = a_b - b_b; estimate = A's value - B's value,
   interval as in 4, and the two-sided p-value
   p = min(1, 2 * min((1 + #{d_b <= 0}) / (B + 1), (1 + #{d_b >= 0}) / (B + 1))).
   Identical predictions give d = 0 everywhere and p = 1; a model better on every resample gets
   p = 2 / (B + 1), never 0: B resamples cannot show more.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from medvlm.errors import DataError

MAX_REDRAW_FACTOR = 20
CHUNK = 50  # resamples per task sent to a worker process


class Undefined(Exception):
    """The metric cannot be computed on this resample (a class or answer type is absent)."""


Statistic = Callable[[np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class Resamples:
    """B resamples of row indices of one test set, and how many draws were replaced."""

    rows: np.ndarray
    redrawn: int


def _attempt(statistic: Statistic, rows: np.ndarray) -> dict[str, float] | None:
    try:
        return statistic(rows)
    except Undefined:
        return None


def _chunk(statistic: Statistic, rows: np.ndarray) -> list[dict[str, float] | None]:
    return [_attempt(statistic, r) for r in rows]


def evaluate(statistic: Statistic, rows: np.ndarray, pool: Executor | None = None) -> list[dict[str, float] | None]:
    """`statistic` on each row of `rows` (None where undefined), split over the pool's processes.
    The statistic must pickle (a module-level class) when a pool is given."""
    if pool is None or len(rows) < 2 * CHUNK:
        return _chunk(statistic, rows)
    parts = np.array_split(rows, len(rows) // CHUNK)
    return [v for part in pool.map(_chunk, [statistic] * len(parts), parts) for v in part]


def bootstrap(statistic: Statistic, n: int, resamples: int, seed: int,
              pool: Executor | None = None) -> tuple[Resamples, dict[str, np.ndarray]]:
    """Draw the resamples of a test set (step 1), redrawing where `statistic` is undefined, and
    return them with `statistic`'s replicates: one array of length B per metric.

    All B resamples are evaluated first (in parallel), then the undefined ones are redrawn in
    order b = 0..B-1: the same draws as redrawing each one on the spot."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(resamples, n))
    values = evaluate(statistic, rows, pool)
    redrawn = 0
    for b in range(resamples):
        while values[b] is None:
            redrawn += 1
            if redrawn > MAX_REDRAW_FACTOR * resamples:
                raise DataError(f"metrics are undefined on most bootstrap resamples of this test set ({n} samples): "
                                "a class or answer type is too rare; evaluate on a larger or more balanced test set")
            rows[b] = rng.integers(0, n, size=n)
            values[b] = _attempt(statistic, rows[b])
    return Resamples(rows, redrawn), _stack(values)


def replicates(statistic: Statistic, resamples: Resamples, pool: Executor | None = None) -> dict[str, np.ndarray]:
    """`statistic` on every resample of a test set already drawn (step 2)."""
    values = evaluate(statistic, resamples.rows, pool)
    if any(v is None for v in values):
        raise DataError("a metric is undefined on a resample where another run on the same test samples had it; "
                        "the runs' per-sample tables disagree on the labels")
    return _stack(values)


def _stack(values: list[dict[str, float]]) -> dict[str, np.ndarray]:
    return {key: np.array([v[key] for v in values]) for key in values[0]}


def process_pool(workers: int) -> Executor | None:
    """A pool of `workers` processes (0 = one per CPU); None for one. Forked where the platform
    can, so workers start without re-importing anything."""
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers <= 1:
        return None
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def pooled(runs: list[np.ndarray], seed: int) -> np.ndarray:
    """A cell's replicates from its runs' replicates (step 3); one run's are returned as they are."""
    if len(runs) == 1:
        return runs[0]
    stacked = np.stack(runs)  # (k, B)
    k, n_resamples = stacked.shape
    picks = np.random.default_rng([seed, k]).integers(0, k, size=(n_resamples, k))
    return stacked[picks, np.arange(n_resamples)[:, None]].mean(axis=1)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (step 4)."""
    tail = round(50 * (1 - confidence), 10)  # 2.5, not 2.5000000000000027, for 0.95
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference (step 5)."""
    count = len(differences) + 1
    below = (1 + np.count_nonzero(differences <= 0)) / count
    above = (1 + np.count_nonzero(differences >= 0)) / count
    return float(min(1.0, 2 * min(below, above)))


@dataclass(frozen=True)
class Difference:
    """A - B on the same test set: estimate, percentile interval, p-value."""

    estimate: float
    low: float
    high: float
    p: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


def paired_difference(a_value: float, b_value: float, a_replicates: np.ndarray, b_replicates: np.ndarray,
                      confidence: float) -> Difference:
    """Step 5: replicates must come from the same resamples of the same test set."""
    d = a_replicates - b_replicates
    low, high = percentile_interval(d, confidence)
    return Difference(float(a_value - b_value), low, high, p_value(d))
