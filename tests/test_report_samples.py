"""Per-sample tables in the experiments' layouts -> statistics that reproduce the logged metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medvlm.data.base import ClassificationData
from medvlm.experiments.classification import predictions_table
from medvlm.metrics.classification import classification_metrics, probabilities
from medvlm.metrics.vqa import vqa_metrics
from medvlm.report.samples import classification_samples, vqa_samples


@pytest.mark.parametrize("kind, classes", [("binary", 2), ("multiclass", 4), ("multilabel", 3)])
def test_classification_statistic_reads_the_predictions_table_of_every_kind(kind, classes):
    rng = np.random.default_rng(0)
    n = 50
    logits = torch.as_tensor(rng.normal(size=(n, classes)))
    labels = rng.integers(0, 2, size=(n, classes)) if kind == "multilabel" else np.arange(n) % classes
    names = [f"c{i}" for i in range(classes)]
    data = ClassificationData("x", kind, names, [[c] for c in names], {})
    probs = probabilities(logits, kind)
    table = predictions_table(probs, labels, data).sample(frac=1.0, random_state=0)  # row order must not matter
    samples = classification_samples(table)
    rows = rng.integers(0, n, size=n)
    expected = classification_metrics(labels[rows], probs[rows], kind)
    assert samples.statistic(rows) == pytest.approx({f"test_{k}": v for k, v in expected.items()}, abs=1e-12)
    full = classification_metrics(labels, probs, kind)
    assert samples.check({f"test_{k}": v for k, v in full.items()}) == ""
    assert "the run logged" in samples.check({"test_acc": 0.123})


def test_vqa_statistic_scores_out_of_vocabulary_answers_as_unknown():
    table = pd.DataFrame({"image": ["a", "a", "b", "c"], "question": ["q1", "q2", "q3", "q4"],
                          "answer": ["Yes", "liver", "spleen", "no"], "prediction": ["yes", "lung", "unknown", "yes"],
                          "oov": [False, False, True, False], "answer_type": ["closed", "open", "open", "closed"]})
    samples = vqa_samples(table)
    everything = samples.statistic(np.arange(4))
    # truth as vocabulary classes: yes, liver, unknown (oov), no; predictions: yes, lung, unknown, yes
    y, pred = np.array([0, 1, 2, 3]), np.array([0, 4, 2, 0])
    closed = np.array([True, False, False, True])
    expected = {f"test_{k}": v for k, v in vqa_metrics(y, pred, closed).items() if k != "oov"}
    assert everything == pytest.approx(expected) and everything["test_acc"] == 0.5
    assert samples.testset != vqa_samples(table.assign(question=["q1", "q2", "q3", "other"])).testset
