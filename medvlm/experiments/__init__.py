"""One experiment per task; each runs inside the active MLflow run and returns its test metrics."""

from __future__ import annotations

from collections.abc import Callable

from medvlm.config import RunConfig
from medvlm.errors import ConfigError


def _classification(cfg: RunConfig) -> dict[str, float]:
    from medvlm.experiments.classification import run_classification

    return run_classification(cfg)


def _vqa(cfg: RunConfig) -> dict[str, float]:
    from medvlm.experiments.vqa import run_vqa

    return run_vqa(cfg)


def _unavailable(task: str) -> Callable[[RunConfig], dict[str, float]]:
    def run(cfg: RunConfig) -> dict[str, float]:
        raise ConfigError(f"task={task} is not available in this medvlm build; use task=classification")
    return run


EXPERIMENTS: dict[str, Callable[[RunConfig], dict[str, float]]] = {
    "classification": _classification,
    "retrieval": _unavailable("retrieval"),
    "vqa": _vqa,
}
