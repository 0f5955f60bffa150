"""The training loop on a small synthetic problem: early stopping keeps the best epoch, gradient
accumulation equals a larger batch, and non-finite losses stop training with a clear error."""

from __future__ import annotations

import os
import signal
import time

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


@pytest.mark.parametrize("checkpoint_every", [None, 0, 600])
def test_early_stopping_restores_the_best_epoch(checkpoint_every, tmp_path):
    """The best weights wait in a file; when the best epoch was checkpointed, its checkpoint is that file."""
    train, val = problem()
    cfg = config(epochs=40, patience=2, lr=0.5, checkpoint_every=checkpoint_every or 0)
    objective = ClassificationObjective(linear(), "binary")
    seen_rows = []
    identity = checkpoint_identity("run", cfg.resolved(), {})
    checkpoints = Checkpoints(tmp_path, "run", identity) if checkpoint_every is not None else None
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
    best_file = BestWeights(tmp_path / "run").path(result.best_epoch)
    if checkpoint_every == 0:
        kept = Checkpoints(tmp_path, "run", identity)
        kept.path = best_file  # a hard link of the best epoch's checkpoint
        assert kept.load()["epoch"] == result.best_epoch < checkpoints.load()["epoch"]
        torch.testing.assert_close(kept.load()["trainable"]["weight"], objective.module.weight.detach())
    if checkpoint_every == 600:  # the run took far less: no resume checkpoint, only the best weights
        assert checkpoints.load() is None
        assert sorted((tmp_path / "run").iterdir()) == [best_file]


def fake_clock(monkeypatch) -> list[float]:
    """The trainer's clock, advanced by the test: checkpoint intervals without waiting for them."""
    from types import SimpleNamespace

    from medvlm.engine import trainer

    now = [0.0]
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=time.perf_counter, monotonic=lambda: now[0]))
    return now


def test_checkpoints_come_every_checkpoint_every_seconds_of_training(monkeypatch, tmp_path):
    now = fake_clock(monkeypatch)
    train, val = problem()
    cfg = config(epochs=8, patience=8, checkpoint_every=600)
    written: list[int] = []

    def epoch_takes_250_s(epoch, row):
        now[0] += 250

    fit(ClassificationObjective(linear(), "binary"), train, val, cfg, make_accelerator(cfg),
        Checkpoints(tmp_path, "run", checkpoint_identity("run", cfg.resolved(), {})),
        on_epoch=epoch_takes_250_s, on_checkpoint=written.append)
    # the clock moves after each epoch's decision: 750 s at the end of epoch 4, then 750 s later (epoch numbers)
    assert written == [4, 7]


def test_a_run_killed_between_checkpoints_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path):
    """Killed after epoch 6 (1-based), with the checkpoint of epoch 4 and a newer best epoch's weights (epoch 5)
    written since: the resume keeps the best weights its checkpoint names and replays the rest exactly."""
    now = fake_clock(monkeypatch)
    train, val = problem()
    cfg = config(epochs=12, patience=12, lr=0.1, checkpoint_every=600)  # val_loss improves until epoch 7
    identity = checkpoint_identity("run", cfg.resolved(), {})

    def run(folder, kill_after=None):
        def on_epoch(epoch, row):
            now[0] += 250
            if epoch == kill_after:
                raise RuntimeError("killed")
        objective = ClassificationObjective(linear(), "binary")
        return fit(objective, train, val, cfg, make_accelerator(cfg), Checkpoints(folder, "run", identity),
                   on_epoch), objective.module

    straight, straight_module = run(tmp_path / "straight")
    assert straight.best_epoch == 6
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "resumed", kill_after=6)
    folder = tmp_path / "resumed" / "run"
    assert Checkpoints(tmp_path / "resumed", "run", identity).load()["epoch"] == 3
    assert sorted(p.name for p in folder.glob("best-*")) == ["best-4.safetensors", "best-5.safetensors"]
    resumed, resumed_module = run(tmp_path / "resumed")
    assert resumed.history == straight.history and resumed.best_epoch == straight.best_epoch
    for a, b in zip(resumed_module.parameters(), straight_module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler, as in a fresh `medvlm` process: an in-process test earlier in the
    suite can leave a library's handler installed, which fit() rightly leaves alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_finishes_the_epoch_checkpoints_it_and_stops(tmp_path, python_ctrl_c):
    train, val = problem()
    cfg = config(epochs=6, patience=6, checkpoint_every=600)
    checkpoints = Checkpoints(tmp_path, "run", checkpoint_identity("run", cfg.resolved(), {}))
    rows = []

    def ctrl_c_after_the_first_epoch(epoch, row):
        rows.append(row)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit(ClassificationObjective(linear(), "binary"), train, val, cfg, make_accelerator(cfg), checkpoints,
            ctrl_c_after_the_first_epoch)
    assert len(rows) == 2 and checkpoints.load()["epoch"] == 1  # the epoch under way finished and was kept
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def ctrl_c_twice(epoch, row):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    checkpoints.clear()
    with pytest.raises(KeyboardInterrupt):
        fit(ClassificationObjective(linear(), "binary"), train, val, cfg, make_accelerator(cfg), checkpoints,
            ctrl_c_twice)
    assert checkpoints.load() is None, "a second Ctrl-C stops at once"


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
