"""Bootstrap intervals and paired tests against independent numpy computations, and the
significance of differences built by construction (clearly better -> p < 0.05, identical -> p = 1)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medvlm.errors import DataError
from medvlm.metrics import bootstrap
from medvlm.report.samples import ClassificationStatistic

N, B, SEED = 60, 1000, 7


def mean_of(values: np.ndarray):
    return lambda rows: {"mean": float(values[rows].mean())}


def test_percentile_interval_equals_a_plain_numpy_bootstrap():
    values = np.random.default_rng(1).normal(size=N)
    _, reps = bootstrap.bootstrap(mean_of(values), N, B, SEED)
    rows = np.random.default_rng(SEED).integers(0, N, size=(B, N))
    expected = values[rows].mean(axis=1)
    np.testing.assert_array_equal(reps["mean"], expected)
    assert bootstrap.percentile_interval(reps["mean"], 0.95) == tuple(np.percentile(expected, [2.5, 97.5]))
    assert bootstrap.percentile_interval(reps["mean"], 0.9) == tuple(np.percentile(expected, [5, 95]))


def test_undefined_resamples_are_redrawn_in_order_from_the_same_generator():
    """A statistic undefined unless row 0 is drawn: redraws follow the documented order."""
    values = np.arange(N, dtype=float)

    def needs_row_zero(rows):
        if 0 not in rows:
            raise bootstrap.Undefined
        return {"mean": float(values[rows].mean())}

    n, resamples = 20, 200
    values = values[:n]
    drawn, reps = bootstrap.bootstrap(needs_row_zero, n, resamples, SEED)
    rng = np.random.default_rng(SEED)
    rows = rng.integers(0, n, size=(resamples, n))
    redrawn = 0
    for b in range(resamples):
        while 0 not in rows[b]:
            rows[b] = rng.integers(0, n, size=n)
            redrawn += 1
    assert redrawn > 0 and drawn.redrawn == redrawn
    np.testing.assert_array_equal(drawn.rows, rows)
    np.testing.assert_array_equal(reps["mean"], values[rows].mean(axis=1))


def test_a_process_pool_gives_the_same_replicates():
    values = np.random.default_rng(2).normal(size=N)
    serial = bootstrap.bootstrap(mean_of(values), N, 300, SEED)[1]["mean"]
    pool = bootstrap.process_pool(2)
    try:
        parallel = bootstrap.bootstrap(ClassifierMean(values), N, 300, SEED, pool)[1]["mean"]
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(serial, parallel)


class ClassifierMean:
    """A picklable statistic (worker processes receive it)."""

    def __init__(self, values: np.ndarray):
        self.values = values

    def __call__(self, rows: np.ndarray) -> dict[str, float]:
        return {"mean": float(self.values[rows].mean())}


def test_two_level_pooling_resamples_runs_as_documented():
    per_run = [np.random.default_rng(i).normal(size=B) for i in range(3)]
    pooled = bootstrap.pooled(per_run, SEED)
    picks = np.random.default_rng([SEED, 3]).integers(0, 3, size=(B, 3))
    expected = np.array([np.mean([per_run[k][b] for k in picks[b]]) for b in range(B)])
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=1e-15)
    assert bootstrap.pooled(per_run[:1], SEED) is per_run[0]


def binary_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], N // 2)
    good = np.where(labels == 1, 0.7, 0.3) + rng.normal(0, 0.05, N)  # separates the classes perfectly
    chance = rng.random(N)
    return labels, np.stack([1 - good, good], 1), np.stack([1 - chance, chance], 1)


def auc_replicates(labels: np.ndarray, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The independent reference: sklearn's AUC on each resample."""
    return np.array([roc_auc_score(labels[r], probs[r, 1]) for r in rows])


@pytest.fixture(scope="module")
def significance():
    labels, good, chance = binary_case()
    n_resamples = 100
    drawn, a = bootstrap.bootstrap(ClassificationStatistic(labels, good, "binary"), N, n_resamples, SEED)
    b = bootstrap.replicates(ClassificationStatistic(labels, chance, "binary"), drawn)
    same = bootstrap.replicates(ClassificationStatistic(labels, good.copy(), "binary"), drawn)
    return labels, good, chance, drawn, a, b, same


def test_classification_replicates_equal_sklearn_on_the_same_resamples(significance):
    labels, good, chance, drawn, a, b, _ = significance
    np.testing.assert_allclose(a["test_auc"], auc_replicates(labels, good, drawn.rows), atol=1e-12)
    np.testing.assert_allclose(b["test_auc"], auc_replicates(labels, chance, drawn.rows), atol=1e-12)
    acc = ((chance[drawn.rows, 1] > 0.5) == labels[drawn.rows]).mean(axis=1)
    np.testing.assert_allclose(b["test_acc"], acc, atol=1e-12)


def test_clearly_better_is_significant_and_identical_has_p_one(significance):
    labels, good, chance, _, a, b, same = significance
    better = bootstrap.paired_difference(1.0, roc_auc_score(labels, chance[:, 1]), a["test_auc"], b["test_auc"], 0.95)
    assert better.p < 0.05 and better.low > 0 and better.significant
    assert better.p == pytest.approx(2 / 101)  # better on every resample: the smallest p B resamples can give
    identical = bootstrap.paired_difference(1.0, 1.0, a["test_auc"], same["test_auc"], 0.95)
    assert identical.p == 1.0 and (identical.estimate, identical.low, identical.high) == (0.0, 0.0, 0.0)
    assert not identical.significant


def test_p_value_definition():
    d = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    # P(d <= 0) = (1 + 2) / 6, P(d >= 0) = (1 + 4) / 6 -> p = 2 * 3 / 6 = 1
    assert bootstrap.p_value(d) == 1.0
    assert bootstrap.p_value(np.array([0.5] * 99 + [-0.5])) == pytest.approx(2 * 2 / 101)


def test_a_metric_undefined_on_nearly_every_resample_fails_in_one_line():
    def never(rows):
        raise bootstrap.Undefined

    with pytest.raises(DataError, match="undefined on most bootstrap resamples"):
        bootstrap.bootstrap(never, N, 100, SEED)
