"""The tail every task's experiment shares: checkpoint, fit, evaluate, register the adapter, clear.

A task's experiment module keeps only what is its own (its data, its module, its test-time
logging) and hands the rest to `fit_evaluate_register`, so the three tasks cannot drift apart on
what resume, multi-process training or the Model Registry need:
- the checkpoint is keyed by rank 0's run id on every rank (`cfg.resume` is rank 0's id; on a fresh
  run it is broadcast), so a resumed multi-process run restarts every rank from rank 0's epoch and
  every rank restores the best weights rank 0 kept;
- epochs a kill cut off between the checkpoint and the tracking store are re-logged on resume;
- the checkpoint is cleared by the main process alone, after every rank has finished with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlflow
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import Dataset

from medvlm.adapters.base import Adapter, log_adapter, register, registered_name, version_description
from medvlm.catalog import TASKS, TaskSpec
from medvlm.config import RunConfig
from medvlm.engine.features import model_for_run
from medvlm.engine.checkpoints import Checkpoints
from medvlm.engine.trainer import Objective, fit, make_accelerator
from medvlm.strategies import get_strategy
from medvlm import names
from medvlm.tracking.figures import figure_path, log_figures
from medvlm.tracking.plots import learning_curves_figure
from medvlm.tracking.session import describe, log_epoch, note_checkpoint, replay_epochs
from medvlm.zoo import ClipModel

History = list[dict[str, float]]


def start(cfg: RunConfig) -> tuple[Accelerator, ClipModel]:
    """The run's Accelerator and its CLIP-family model on the Accelerator's device: a fresh one when the strategy
    trains the encoder, else the worker's shared frozen one (`model_for_run`)."""
    accelerator = make_accelerator(cfg)
    return accelerator, model_for_run(cfg.model, accelerator.device, get_strategy(cfg.strategy).kind.trains_encoder)


def checkpoints(cfg: RunConfig, accelerator: Accelerator, pin: dict[str, Any]) -> Checkpoints:
    """Rank 0's checkpoint folder, on every rank: the other ranks track into throwaway runs, so rank 0's
    run id (the resumed one, or the one it just started) is sent to them."""
    run_id = [cfg.resume or mlflow.active_run().info.run_id]
    if accelerator.num_processes > 1:
        broadcast_object_list(run_id, from_process=0)
    return Checkpoints.for_run(cfg, run_id[0], pin)


def fit_evaluate_register(cfg: RunConfig, accelerator: Accelerator, pin: dict[str, Any], objective: Objective | None,
                          train_set: Dataset | None, val_set: Dataset | None,
                          evaluate: Callable[[], dict[str, float]],
                          adapter: Callable[[], Adapter] | None = None, task: TaskSpec | None = None) -> dict[str, float]:
    """Train (unless the strategy does not), evaluate on test, register a produced adapter; returns the
    test metrics. `pin` is the base model's weights pin, part of the checkpoint's identity (a resume onto other
    weights is refused). `evaluate()` runs on the best weights and logs the task's test results; a strategy
    that does not train passes no objective and no training data. `task` is the task's row for the run's
    model (the generative row for LLaVA-family models); by default the task's own."""
    strategy, task = get_strategy(cfg.strategy), task or TASKS[cfg.task]
    history: History = []
    selection, best_epoch = None, 0
    if strategy.kind.trains:
        saved = checkpoints(cfg, accelerator, pin)
        result = fit(objective, train_set, val_set, cfg, accelerator, saved, log_epoch, replay_epochs, note_checkpoint)
        history, best_epoch = result.history, result.best_epoch
        mlflow.log_metrics({names.TRAIN_IMAGES_PER_S: result.images_per_s,
                            names.TRAIN_BEST_EPOCH: names.epoch_number(result.best_epoch),
                            names.TRAIN_EPOCHS_RUN: result.epochs_run})
        selection = (task.selection_metric, history[result.best_epoch][task.selection_metric], task.selection_higher)
    metrics = evaluate()
    if history:
        log_figures({figure_path("plots/learning_curves", cfg.figure_format): learning_curves_figure(
            history, result.best_epoch, task.selection_metric, describe(cfg))})
    if strategy.kind.produces_adapter and cfg.register_adapter and adapter is not None:
        made = adapter()
        meta = {"model": cfg.model, "pin": made.pin, "task": cfg.task, "dataset": cfg.dataset, "strategy": cfg.strategy,
                **made.meta}
        test = (task.primary_metric, metrics[task.primary_metric]) if task.primary_metric in metrics else None
        model_id = log_adapter(made, meta, registered_name(cfg.model, cfg.dataset, cfg.task), selection,
                               version_description(meta, selection, test), best_epoch)
        if not cfg.study:  # a study registers its best trial at its end, if its spec says so (`register_best`)
            register(mlflow.MlflowClient(), model_id, mlflow.active_run().info.run_id)
    if strategy.kind.trains:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            saved.clear()
    return metrics
