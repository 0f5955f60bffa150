"""Tracked runs with known per-sample predictions, logged by the experiments' own code.

`tracked_run` sets the run tags and params exactly as a real run does, and the experiments'
`log_test_results` logs the test metrics and the per-sample table, so a report reads these runs
exactly as it reads real ones; only the model outputs are chosen by the test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from medvlm.config import build_config
from medvlm.data.base import ClassificationData
from medvlm.tracking.session import tracked_run

EXPERIMENT = "report-test"


def log_classification_run(model: str, strategy: str, probs: np.ndarray, labels: np.ndarray, *,
                           dataset: str = "breastmnist", extra_tags: dict[str, str] | None = None,
                           **params) -> str:
    """One finished classification run whose test predictions are `probs` (N, C); returns its id."""
    from medvlm.experiments.classification import log_test_results

    cfg = build_config({"model": model, "dataset": dataset, "strategy": strategy, "experiment": EXPERIMENT,
                        "size": 28, **params})
    names = [f"class {i}" for i in range(probs.shape[1])]
    data = ClassificationData(dataset, "binary" if probs.shape[1] == 2 else "multiclass", names, [[n] for n in names], {})
    with tracked_run(cfg, extra_tags=extra_tags) as run:
        log_test_results(torch.as_tensor(np.log(probs)), torch.as_tensor(labels), data, cfg)
    return run.info.run_id


def binary_probs(labels: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """(N, 2) probabilities whose label-1 score separates the classes by `skill` (0 = chance)."""
    rng = np.random.default_rng(seed)
    score = 1 / (1 + np.exp(-(skill * (2 * labels - 1) + rng.normal(size=len(labels)))))
    return np.stack([1 - score, score], axis=1)


def vqa_test_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """QA rows as `medvlm.data.vqa` gives them: half closed yes/no, half open with a few answers."""
    rng = np.random.default_rng(seed)
    closed = np.arange(n) % 2 == 0
    answers = np.where(closed, rng.choice(["yes", "no"], n), rng.choice(["liver", "lung", "brain", "kidney"], n))
    return pd.DataFrame({"image_index": np.arange(n) // 3, "image_name": [f"img{i // 3}.jpg" for i in range(n)],
                         "question": [f"question {i}?" for i in range(n)], "answer": answers, "closed": closed,
                         "question_type": np.where(closed, "PRES", "ORGAN")})


def log_vqa_run(model: str, strategy: str, test: pd.DataFrame, correct: np.ndarray, *, dataset: str = "vqa_rad",
                seed: int = 0) -> str:
    """One finished VQA run that answers test row i right exactly where `correct[i]` (else a wrong vocabulary answer)."""
    from medvlm.data.vqa import VQAData
    from medvlm.experiments.vqa import log_test_results
    from medvlm.tasks.vqa import AnswerVocab

    vocab = AnswerVocab.build(["yes", "no", "liver", "lung", "brain", "kidney"], [True, True, False, False, False, False])
    truth = vocab.encode(test["answer"])
    wrong = np.where(truth == vocab.encode(["yes"])[0], vocab.encode(["no"])[0], vocab.encode(["yes"])[0])
    pred = np.where(correct, truth, wrong)
    logits = torch.full((len(test), len(vocab)), -5.0)
    logits[torch.arange(len(test)), torch.as_tensor(pred)] = 5.0
    targets = torch.as_tensor(np.stack([truth, test["closed"].to_numpy(np.int64)], axis=1))
    data = VQAData(dataset, "test", torch.empty(0), {"test": test}, "image", "")
    cfg = build_config({"model": model, "dataset": dataset, "task": "vqa", "strategy": strategy, "seed": seed,
                        "experiment": EXPERIMENT})
    with tracked_run(cfg) as run:
        log_test_results(logits, targets, data, vocab)
    return run.info.run_id
