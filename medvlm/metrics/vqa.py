"""VQA metrics: accuracy and weighted F1 overall, on open and on closed questions, and per group.

Predictions and answers are indices into the answer vocabulary; test answers outside it carry
the `unknown` index, so they count as errors unless the model predicts `unknown`, and their
number is reported (`oov`) instead of the rows being dropped. Weighted F1 is scikit-learn's
(`average="weighted"`, support-weighted over the labels present). A subset with no rows
(e.g. no open questions) gets no metrics rather than a NaN that would read like a result.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

BREAKDOWN_METRIC_COLUMNS = ("question_type", "content_type")


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"acc": float(accuracy_score(y_true, y_pred)),
            "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0))}


def vqa_metrics(y_true: np.ndarray, y_pred: np.ndarray, closed: np.ndarray, unknown_index: int = 0) -> dict[str, float]:
    """acc, f1_weighted, the same with _open / _closed suffixes, and `oov` (answers mapped to unknown)."""
    y_true, y_pred, closed = np.asarray(y_true), np.asarray(y_pred), np.asarray(closed, dtype=bool)
    if not (y_true.shape == y_pred.shape == closed.shape) or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true, y_pred and closed must be equal-length 1-d arrays, got "
                         f"{y_true.shape}, {y_pred.shape}, {closed.shape}")
    out = _scores(y_true, y_pred)
    for name, subset in (("open", ~closed), ("closed", closed)):
        if subset.any():
            out.update({f"{k}_{name}": v for k, v in _scores(y_true[subset], y_pred[subset]).items()})
    out["oov"] = float((y_true == unknown_index).sum())
    return out


def breakdown(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.DataFrame) -> pd.DataFrame:
    """One row per (column, value) of `groups` (question type, organ, ...): n, acc, f1_weighted."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rows = []
    for column in groups.columns:
        values = groups[column].astype(str).to_numpy()
        for value in sorted(set(values)):
            subset = values == value
            rows.append({"column": column, "value": value, "n": int(subset.sum()),
                         **_scores(y_true[subset], y_pred[subset])})
    return pd.DataFrame(rows, columns=["column", "value", "n", "acc", "f1_weighted"])


def breakdown_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`acc_<column>_<value>` for the question/content-type rows of a `breakdown` table (MLflow-safe names)."""
    picked = table[table["column"].isin(BREAKDOWN_METRIC_COLUMNS)]
    return {f"acc_{row.column}_{_slug(row.value)}": float(row.acc) for row in picked.itertuples()}


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_") or "none"
