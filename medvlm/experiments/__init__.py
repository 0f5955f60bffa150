"""One experiment per task; each runs inside the active MLflow run and returns its test metrics."""

from __future__ import annotations

import importlib

from accelerate.utils import set_seed

from medvlm.catalog import TASKS
from medvlm.config import RunConfig
from medvlm.tracking.session import tracked_run


def run_experiment(cfg: RunConfig, nested: bool = False, extra_tags: dict[str, str] | None = None) -> dict[str, float]:
    """Dispatch to the task's runner (`TaskSpec.runner`) inside the run `cfg` defines (a nested child run for
    study trials). The runner's module is imported here, so a run loads only its own task's code.

    Seeding first makes head and adapter initialisation part of the seed, so CPU reruns repeat exactly.
    """
    module, _, function = TASKS[cfg.task].runner.partition(":")
    runner = getattr(importlib.import_module(module), function)
    with tracked_run(cfg, nested=nested, extra_tags=extra_tags):
        set_seed(cfg.seed)
        return runner(cfg)
