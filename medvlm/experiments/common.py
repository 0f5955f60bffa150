"""The tail every task's experiment shares: checkpoint, fit, evaluate, register the adapter, clear.

A task's experiment module keeps only what is its own (its data, its module, its test-time
logging) and hands the rest to `fit_evaluate_register`, so the three tasks cannot drift apart on
what resume, multi-process training or the Model Registry need:
- the checkpoint is keyed by rank 0's run id on every rank (`cfg.resume` is rank 0's id; on a fresh
  run only rank 0 writes), so a resumed multi-process run restarts every rank from rank 0's epoch;
- epochs a kill cut off between the checkpoint and the tracking store are re-logged on resume;
- the checkpoint is cleared by the main process alone, after every rank has finished with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from medvlm.adapters.base import AdapterModel, log_adapter, registered_name
from medvlm.catalog import TASKS
from medvlm.config import RunConfig
from medvlm.engine.trainer import Checkpoints, Objective, fit
from medvlm.strategies import get_strategy
from medvlm.tracking.session import log_epoch, replay_epochs
from medvlm.zoo.base import ClipModel

History = list[dict[str, float]]


@dataclass
class Adapter:
    """What a LoRA run registers: the serving model class, the adapted base model, its task heads and
    the task's own metadata (the base model, its pin, the task and the dataset are added here)."""

    python_model: AdapterModel
    clip: ClipModel
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def checkpoints(cfg: RunConfig) -> Checkpoints:
    """Rank 0's checkpoint, on every rank."""
    return Checkpoints(cfg.checkpoint_dir, cfg.resume or mlflow.active_run().info.run_id)


def fit_evaluate_register(cfg: RunConfig, accelerator: Accelerator, objective: Objective | None,
                          train_set: Dataset | None, val_set: Dataset | None,
                          evaluate: Callable[[History], dict[str, float]],
                          adapter: Callable[[], Adapter] | None = None) -> dict[str, float]:
    """Train (unless the strategy does not), evaluate on test, register a produced adapter; returns the
    test metrics. `evaluate(history)` runs on the best weights and logs the task's test results; a strategy
    that does not train passes no objective and no training data."""
    strategy, task = get_strategy(cfg.strategy), TASKS[cfg.task]
    history: History = []
    selection = None
    if strategy.trains:
        result = fit(objective, train_set, val_set, cfg, accelerator, checkpoints(cfg), log_epoch, replay_epochs)
        history = result.history
        mlflow.log_metrics({"train_images_per_s": result.images_per_s, "best_epoch": result.best_epoch + 1,
                            "epochs_run": result.epochs_run})
        selection = (task.selection_metric, history[result.best_epoch][task.selection_metric], True)
    metrics = evaluate(history)
    if strategy.produces_adapter and cfg.register_adapter and adapter is not None:
        made = adapter()
        meta = {"model": cfg.model, "pin": made.clip.spec.pin, "task": cfg.task, "dataset": cfg.dataset, **made.meta}
        log_adapter(made.python_model, made.clip.net, made.heads, meta, registered_name(cfg.model, cfg.dataset, cfg.task),
                    selection)
    if strategy.trains:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            checkpoints(cfg).clear()
    return metrics
