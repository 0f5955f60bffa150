"""Before a study's first trial: is every model and dataset of its plan where it should be?

A study queues hundreds of runs; learning at trial 1 (or at trial 108) that a model's weights
or a dataset are missing wastes the queue. Each distinct model and dataset is located once,
never loaded, and everything missing is reported in one message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from medvlm.config import RunConfig
from medvlm.data import captions, vqa
from medvlm.data.classification import locate_classification
from medvlm.data.hub import locate_hub
from medvlm.errors import ConfigError, MedvlmError
from medvlm.hf_name import is_hf
from medvlm.zoo.factory import locate_weights


def _classification(cfg: RunConfig) -> str:
    return locate_classification(cfg.dataset, data_root=cfg.data_root, size=cfg.size)


def _retrieval(cfg: RunConfig) -> str:
    return str(captions.locate_source(cfg.dataset, Path(cfg.data_root).expanduser())[1])


def _vqa(cfg: RunConfig) -> str:
    return str(vqa.locate_source(cfg.dataset, Path(cfg.data_root).expanduser())[1])


DATA_LOCATORS: dict[str, Callable[[RunConfig], str]] = {
    "classification": _classification, "retrieval": _retrieval, "vqa": _vqa}


def locate_data(cfg: RunConfig) -> str:
    """Where a config's dataset will be read from: an `hf:` dataset the same way for every task."""
    if is_hf(cfg.dataset):
        return locate_hub(cfg.dataset, cfg.data_root)
    return DATA_LOCATORS[cfg.task](cfg)


def preflight(configs: Iterable[RunConfig]) -> list[str]:
    """One line per distinct model and dataset saying where it will come from; ConfigError listing every missing one."""
    checks: dict[str, tuple[str, Callable[[], str]]] = {}
    for cfg in configs:
        checks.setdefault(f"model {cfg.model}", ("model", lambda cfg=cfg: locate_weights(cfg.model)))
        size = f" at size {cfg.size}" if cfg.task == "classification" else ""
        checks.setdefault(f"{cfg.task} data {cfg.dataset}{size} in {cfg.data_root}",
                          ("data", lambda cfg=cfg: locate_data(cfg)))
    found, missing, details = [], [], {}
    for what, (kind, locate) in checks.items():
        try:
            found.append(f"{what}: {locate()}")
        except MedvlmError as exc:
            missing.append(what)
            details.setdefault(kind, f"{what}: {exc}")
    if missing:
        raise ConfigError(f"{len(missing)} of the study's {len(checks)} models and datasets cannot be found, so no "
                          f"trial was started: {'; '.join(missing)}. First of each: {' | '.join(details.values())}")
    return found
