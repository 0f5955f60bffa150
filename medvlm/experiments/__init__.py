"""One experiment per task; each runs inside the active MLflow run and returns its test metrics."""

from __future__ import annotations

from collections.abc import Callable

from medvlm.config import RunConfig


def _classification(cfg: RunConfig) -> dict[str, float]:
    from medvlm.experiments.classification import run_classification

    return run_classification(cfg)


def _vqa(cfg: RunConfig) -> dict[str, float]:
    from medvlm.experiments.vqa import run_vqa

    return run_vqa(cfg)


def _retrieval(cfg: RunConfig) -> dict[str, float]:
    from medvlm.experiments.retrieval import run_retrieval

    return run_retrieval(cfg)


EXPERIMENTS: dict[str, Callable[[RunConfig], dict[str, float]]] = {
    "classification": _classification,
    "retrieval": _retrieval,
    "vqa": _vqa,
}
