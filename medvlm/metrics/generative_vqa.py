"""Metrics for generated (free-text) VQA answers.

Normalisation (`normalize`): lower case, punctuation dropped (decimal points kept), articles
(a, an, the) removed, whitespace collapsed: "The left Kidney." -> "left kidney".

Closed questions (`closed_correct`):
- reference yes/no: the prediction's yes/no is read by one rule (`yes_no`): the first word of the
  normalised prediction if it is yes or no; otherwise the only one of yes/no among its words;
  otherwise (neither, or both) none. None is wrong and counted (`closed_unparsed`).
- other closed references ("left or right?" -> "left"): correct when the normalised reference
  appears in the normalised prediction as whole words, as LLaVA-Med's evaluation counts them.

Open questions, per row then averaged (tokens = words of the normalised text):
- `exact`: normalised prediction equals normalised reference.
- `recall`: share of the reference's tokens found in the prediction (multiset overlap), LLaVA-Med's
  open-question score.
- `f1`: harmonic mean of that recall and the matching precision.
- `bleu1`: clipped unigram precision times the brevity penalty exp(1 - r/c) when c < r.
An empty prediction scores 0 on all four.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pandas as pd

from medvlm.data.vqa import YES_NO, normalize_answer
from medvlm.metrics.vqa_taxonomy import TAGS, error_tag

ARTICLES = frozenset({"a", "an", "the"})
GROUP_COLUMNS = ("question_type", "content_type")


def normalize(text: object) -> str:
    return " ".join(w for w in normalize_answer(text).split() if w not in ARTICLES)


def yes_no(prediction: str) -> str | None:
    words = normalize(prediction).split()
    if words and words[0] in YES_NO:
        return words[0]
    found = YES_NO & set(words)
    return next(iter(found)) if len(found) == 1 else None


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def closed_correct(reference: str, prediction: str) -> tuple[bool, bool]:
    """(correct, parsed) for one closed question; parsed is False when a yes/no could not be read."""
    ref = normalize(reference)
    if ref in YES_NO:
        said = yes_no(prediction)
        return said == ref, said is not None
    return ref == normalize(prediction) or _contains(normalize(prediction).split(), ref.split()), True


def open_scores(reference: str, prediction: str) -> dict[str, float]:
    ref, pred = normalize(reference).split(), normalize(prediction).split()
    if not ref or not pred:
        return {"exact": float(ref == pred and bool(ref)), "recall": 0.0, "f1": 0.0, "bleu1": 0.0}
    common = sum((Counter(ref) & Counter(pred)).values())
    recall, precision = common / len(ref), common / len(pred)
    f1 = 2 * precision * recall / (precision + recall) if common else 0.0
    brevity = 1.0 if len(pred) >= len(ref) else math.exp(1 - len(ref) / len(pred))
    return {"exact": float(ref == pred), "recall": recall, "f1": f1, "bleu1": brevity * precision}


def score_rows(answers: list[str], predictions: list[str], closed: np.ndarray) -> pd.DataFrame:
    """One row per question: correct (closed) or the open scores, the closed yes/no read, and the error tag."""
    rows = []
    for answer, prediction, is_closed in zip(answers, predictions, closed):
        if is_closed:
            correct, parsed = closed_correct(answer, prediction)
            said = yes_no(prediction) if normalize(answer) in YES_NO else prediction
            row = {"correct": float(correct), "parsed": parsed, "exact": np.nan, "recall": np.nan, "f1": np.nan,
                   "bleu1": np.nan}
        else:
            scores = open_scores(answer, prediction)
            correct, parsed, said = bool(scores["exact"]), True, prediction
            row = {"correct": scores["exact"], "parsed": True, **scores}
        row["tag"] = "" if correct else (error_tag(answer, said or prediction) or "other")
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(scored: pd.DataFrame, closed: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    if closed.any():
        out["closed_acc"] = float(scored["correct"][closed].mean())
        out["closed_unparsed"] = float((~scored["parsed"][closed]).sum())
    if (~closed).any():
        open_rows = scored[~closed]
        out.update({f"open_{k}": float(open_rows[k].mean()) for k in ("exact", "recall", "f1", "bleu1")})
    return out


def generative_metrics(answers: list[str], predictions: list[str], closed: np.ndarray,
                       groups: pd.DataFrame | None = None) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """(metrics, per-row scores, breakdown table).

    Metrics: closed_acc, closed_unparsed, open_exact/recall/f1/bleu1, `acc` (closed accuracy and open
    exact match over all rows), error-taxonomy counts `err_<tag>`, and `closed_acc_<column>_<value>` /
    `open_recall_<column>_<value>` for the question-type and content-type groups present.
    """
    closed = np.asarray(closed, dtype=bool)
    scored = score_rows(answers, predictions, closed)
    metrics = {"acc": float(scored["correct"].mean()), **_summary(scored, closed)}
    counts = scored["tag"].value_counts()
    metrics.update({f"err_{tag.replace('-', '_')}": float(counts.get(tag, 0)) for tag in TAGS})
    table = []
    for column in groups.columns if groups is not None else []:
        values = groups[column].astype(str).to_numpy()
        for value in sorted(set(values)):
            subset = values == value
            summary = _summary(scored[subset].reset_index(drop=True), closed[subset])
            table.append({"column": column, "value": value, "n": int(subset.sum()), **summary})
            if column in GROUP_COLUMNS:
                slug = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_") or "none"
                metrics.update({f"{k}_{column}_{slug}": v for k, v in summary.items()
                                if k in ("closed_acc", "open_recall")})
    return metrics, scored, pd.DataFrame(table)
