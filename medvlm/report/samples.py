"""A run's per-sample results, read back from MLflow, and the statistic that recomputes its test
metrics on any subset of rows, with the same metric code the experiment used.

- classification: `predictions.json` (index, label, pred, prob_0..prob_{C-1}) ->
  `medvlm.metrics.classification.classification_metrics`.
- VQA: `examples.json` (question, answer, prediction, oov, answer_type, ...) ->
  `medvlm.metrics.vqa.vqa_metrics`; an out-of-vocabulary answer is the `unknown` class, as in training.
- generative VQA (LLaVA family): `examples.json` (correct, token_recall, answer_type, ...) -> the
  means `medvlm.metrics.generative_vqa` logs: acc, closed_acc, open_recall.
- retrieval: runs log no per-query ranks (only the 50 worst queries), so there is no per-sample
  data and no interval; the report says so instead of guessing.

Before a run's rows are used, the metrics recomputed on *all* rows must equal the logged test
metrics; otherwise the table on disk is not the one the metrics came from and no interval is given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sklearn
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medvlm.catalog import TASKS
from medvlm.data.vqa import normalize_answer
from medvlm.errors import DataError
from medvlm.metrics.classification import classification_metrics
from medvlm.metrics.vqa import vqa_metrics
from medvlm.metrics.bootstrap import Undefined
from medvlm.tasks.vqa import UNKNOWN
from medvlm.names import test

TABLES = {name: task.samples_table for name, task in TASKS.items() if task.samples_table}
NO_TABLE_REASON = {name: task.no_samples for name, task in TASKS.items() if task.no_samples}


@dataclass
class SampleSet:
    """One run's test rows: `testset` identifies the rows (equal only for the same samples in the
    same order), `statistic(rows)` returns the run's test metrics on those rows."""

    testset: str
    n: int
    statistic: Callable[[np.ndarray], dict[str, float]]

    def check(self, logged: dict[str, float]) -> str:
        """"" when the metrics on all rows match the logged ones, else why not."""
        full = self.statistic(np.arange(self.n))
        for key, value in full.items():
            if key in logged and not np.isclose(value, logged[key], rtol=1e-6, atol=1e-9):
                return f"its per-sample table gives {key}={value:.6g}, the run logged {logged[key]:.6g}"
        return ""


def load_samples(client: MlflowClient, experiment_id: str, run_id: str, task: str) -> SampleSet | str:
    """The run's SampleSet, or the reason it has none."""
    artifact = TABLES.get(task)
    if artifact is None:
        return NO_TABLE_REASON.get(task, f"no per-sample table is known for task '{task}'")
    try:
        table = client.load_table(experiment_id, artifact, run_ids=[run_id])
    except MlflowException:
        return f"no {artifact} logged"
    if task == "classification":
        return classification_samples(table)
    return vqa_samples(table) if "oov" in table.columns else generative_vqa_samples(table)


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else str(part).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ClassificationStatistic:
    """classification_metrics on chosen rows (a class, so worker processes can unpickle it)."""

    labels: np.ndarray
    probs: np.ndarray
    kind: str

    def __call__(self, rows: np.ndarray) -> dict[str, float]:
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):  # speed only
            try:
                scores = classification_metrics(self.labels[rows], self.probs[rows], self.kind)
            except DataError:
                raise Undefined from None
        return {test(k): v for k, v in scores.items()}


def classification_samples(table: pd.DataFrame) -> SampleSet:
    """Binary for two probability columns, multi-label when labels are lists, else multi-class
    (the layout `medvlm.experiments.classification.predictions_table` writes)."""
    table = table.sort_values("index", kind="stable")
    columns = sorted((c for c in table.columns if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
    probs = table[columns].to_numpy(np.float64)
    if isinstance(table["label"].iloc[0], (list, tuple, np.ndarray)):
        kind, labels = "multilabel", np.array(table["label"].tolist(), dtype=int)
    else:
        kind, labels = ("binary" if probs.shape[1] == 2 else "multiclass"), table["label"].to_numpy(int)
    return SampleSet(_digest(kind, labels), len(table), ClassificationStatistic(labels, probs, kind))


@dataclass(frozen=True)
class VQAStatistic:
    """vqa_metrics on chosen rows; undefined where a metric of the full test set is (no open or closed row)."""

    y: np.ndarray
    pred: np.ndarray
    closed: np.ndarray
    keys: tuple[str, ...]

    def __call__(self, rows: np.ndarray) -> dict[str, float]:
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
            scores = vqa_metrics(self.y[rows], self.pred[rows], self.closed[rows])
        if not set(self.keys) <= set(scores):
            raise Undefined
        return {test(k): scores[k] for k in self.keys}


def vqa_samples(table: pd.DataFrame) -> SampleSet:
    """Answers as vocabulary classes: an out-of-vocabulary answer is `unknown`, as the run scored it."""
    truth = np.where(table["oov"].astype(bool), UNKNOWN, [normalize_answer(a) for a in table["answer"]])
    _, codes = np.unique(np.concatenate([truth, table["prediction"].astype(str).to_numpy()]), return_inverse=True)
    y, pred = codes[:len(table)], codes[len(table):]
    closed = (table["answer_type"] == "closed").to_numpy()
    keys = tuple(sorted(set(vqa_metrics(y, pred, closed)) - {"oov"}))
    identity = table[["image", "question", "answer", "answer_type"]].astype(str).agg("\x1f".join, axis=1)
    return SampleSet(_digest(*identity), len(table), VQAStatistic(y, pred, closed, keys))


@dataclass(frozen=True)
class GenerativeVQAStatistic:
    """The generated-answer means on chosen rows: acc over all, closed_acc and open_recall on their subsets."""

    correct: np.ndarray
    recall: np.ndarray
    closed: np.ndarray

    def __call__(self, rows: np.ndarray) -> dict[str, float]:
        closed = self.closed[rows]
        if closed.all() or not closed.any():
            raise Undefined
        return {test("acc"): float(self.correct[rows].mean()), test("closed_acc"): float(self.correct[rows][closed].mean()),
                test("open_recall"): float(self.recall[rows][~closed].mean())}


def generative_vqa_samples(table: pd.DataFrame) -> SampleSet:
    """Per-row correctness and token recall, as `medvlm.metrics.generative_vqa.score_rows` computed them."""
    closed = (table["answer_type"] == "closed").to_numpy()
    identity = table[["image", "question", "answer", "answer_type"]].astype(str).agg("\x1f".join, axis=1)
    return SampleSet(_digest(*identity), len(table),
                     GenerativeVQAStatistic(table["correct"].to_numpy(float), table["token_recall"].to_numpy(float),
                                            closed))
