"""One experiment per task; each runs inside the active MLflow run and returns its test metrics."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from accelerate.utils import set_seed

from medvlm.catalog import TASKS, TaskSpec
from medvlm.config import RunConfig
from medvlm.errors import ConfigError
from medvlm.tracking.session import tracked_run
from medvlm.zoo.factory import is_generative


def run_experiment(cfg: RunConfig, nested: bool = False, extra_tags: dict[str, str] | None = None,
                   commit: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Run the task's experiment inside the run `cfg` defines (a nested child run for study trials).

    Seeding first makes head and adapter initialisation part of the seed, so CPU reruns repeat exactly.
    `commit(run_id, metrics)` runs before the run may end FINISHED (a study trial's fence); if it
    raises, the run ends FAILED or KILLED instead.
    """
    with tracked_run(cfg, nested=nested, extra_tags=extra_tags) as run:
        set_seed(cfg.seed)
        task = task_for(cfg)
        module, _, function = task.runner.partition(":")
        metrics = getattr(importlib.import_module(module), function)(cfg)  # imported here: a run loads only its task
        if commit is not None:
            commit(run.info.run_id, metrics)
        return metrics


def task_for(cfg: RunConfig) -> TaskSpec:
    """The task's row for the run's model (generative LLaVA-family models have a VQA row of their own), with
    the strategy checked against what such models take."""
    task = TASKS[cfg.task]
    generative = task.generative is not None and is_generative(cfg.model)
    task = task.for_model(generative)
    why = task.check_model_strategy(cfg.strategy, cfg.model)
    if why:
        raise ConfigError(why)
    if cfg.lora_parts and not generative:
        raise ConfigError(f"lora_parts selects parts of generative (LLaVA) models; {cfg.model} is a {task.models} "
                          f"model: leave lora_parts empty")
    return task
