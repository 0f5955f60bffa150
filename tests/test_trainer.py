"""The training loop on a small synthetic problem: early stopping keeps the best epoch, gradient
accumulation equals a larger batch, and non-finite losses stop training with a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medvlm.config import build_config
from medvlm.data.base import TensorRows
from medvlm.engine.checkpoints import Checkpoints, checkpoint_identity
from medvlm.engine.trainer import BestWeights, EpochShuffle, fit, make_accelerator
from medvlm.errors import TrainingError
from medvlm.tasks.classification import ClassificationObjective


def problem(n: int = 256, seed: int = 0) -> tuple[TensorRows, TensorRows]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=g) > 0).long()
    return TensorRows(x[: n * 3 // 4], y[: n * 3 // 4]), TensorRows(x[n * 3 // 4:], y[n * 3 // 4:])


def config(**kw):
    return build_config({"model": "m", "dataset": "d", "strategy": "full", "lr": 1e-2, "batch_size": 32,
                         "eval_batch_size": 64, **kw})


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(8, 2)


@pytest.mark.parametrize("with_checkpoints", [False, True])
def test_early_stopping_restores_the_best_epoch(with_checkpoints, tmp_path):
    """Without a checkpoint the best weights wait in a temporary file; with one, the best epoch's checkpoint is kept."""
    train, val = problem()
    cfg = config(epochs=40, patience=2, lr=0.5)
    objective = ClassificationObjective(linear(), "binary")
    seen_rows = []
    identity = checkpoint_identity("run", cfg.resolved(), {})
    checkpoints = Checkpoints(tmp_path, "run", identity) if with_checkpoints else None
    result = fit(objective, train, val, cfg, make_accelerator(cfg), checkpoints=checkpoints,
                 on_epoch=lambda e, row: seen_rows.append(row))
    assert result.epochs_run < 40, "patience should stop training early"
    assert result.epochs_run == result.best_epoch + 1 + cfg.patience
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == losses.index(min(losses))
    with torch.no_grad():
        final_val = objective.loss(objective.module(val.inputs), val.labels).item()
    assert final_val == pytest.approx(min(losses), rel=1e-5), "the best epoch's weights are loaded at the end"
    assert seen_rows == result.history
    if with_checkpoints:
        kept = Checkpoints(tmp_path, "run", identity)
        kept.path = tmp_path / "run" / BestWeights.FILE  # a hard link of the best epoch's checkpoint
        assert kept.load()["epoch"] == result.best_epoch < checkpoints.load()["epoch"]
        torch.testing.assert_close(kept.load()["trainable"]["weight"], objective.module.weight.detach())


def test_gradient_accumulation_equals_the_larger_batch():
    train, val = problem()
    a, b = ClassificationObjective(linear(), "binary"), ClassificationObjective(linear(), "binary")
    cfg_big = config(epochs=2, batch_size=64, optimizer="adam")
    cfg_acc = config(epochs=2, batch_size=32, grad_accum=2, optimizer="adam")
    fit(a, train, val, cfg_big, make_accelerator(cfg_big))
    fit(b, train, val, cfg_acc, make_accelerator(cfg_acc))
    for pa, pb in zip(a.module.parameters(), b.module.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_shuffle_is_a_function_of_seed_and_epoch():
    s = EpochShuffle(50, seed=3)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(2)
    assert list(s) != first
    s.set_epoch(1)
    assert list(s) == first and sorted(first) == list(range(50))


def test_non_finite_loss_raises_training_error():
    train, val = problem()
    train.inputs[5, 0] = float("nan")
    cfg = config(epochs=2)
    with pytest.raises(TrainingError, match="lower lr"):
        fit(ClassificationObjective(linear(), "binary"), train, val, cfg, make_accelerator(cfg))


def test_no_trainable_parameters_is_refused():
    train, val = problem()
    module = linear().requires_grad_(False)
    cfg = config(epochs=1)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        fit(ClassificationObjective(module, "binary"), train, val, cfg, make_accelerator(cfg))
