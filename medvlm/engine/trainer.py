"""The training loop: Accelerate, mixed precision, early stopping, exact resume.

Task-agnostic: a task hands over an `Objective` (the module to train, its loss and its
metrics) and datasets of (inputs, targets) batches; the engine owns optimisation,
devices, precision, checkpoints and the epoch loop. Per-epoch metrics go to a callback
so tracking never sits inside the step loop.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from medvlm.config import RunConfig
from medvlm.data.base import collate_batch
from medvlm.engine.checkpoints import BEST_FILES, Checkpoints, load_trainable, unshared
from medvlm.errors import ConfigError, TrainingError
from medvlm.progress import log
from medvlm import names

NAN_CHECK_EVERY = 50


class Objective(Protocol):
    module: nn.Module

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]: ...


@dataclass
class FitResult:
    """`best_epoch` indexes `history` (0-based); users see it as `names.epoch_number(best_epoch)`."""

    best_epoch: int
    best_val_loss: float
    epochs_run: int
    images_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


class EpochShuffle(Sampler[int]):
    """A fresh permutation per epoch, a pure function of (seed, epoch): resume replays it exactly."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def mixed_precision(precision: str) -> str:
    if precision == "fp32" or not torch.cuda.is_available():
        if precision in ("bf16", "fp16") and not torch.cuda.is_available():
            raise ConfigError(f"precision={precision} needs a GPU; use precision=auto or fp32 on CPU")
        return "no"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """Accelerate with the GPU fast paths switched on where there is a GPU (nothing changes on CPU).

    Batches are pinned uint8 (`_loader`), so the host-to-device copy can be non-blocking; TF32
    serves fp32 matmuls (precision=fp32 runs) on tensor cores at ~10-bit mantissa, the
    trade every CLIP training recipe makes.
    """
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(mixed_precision=mixed_precision(cfg.precision), gradient_accumulation_steps=cfg.grad_accum,
                       cpu=not cuda, dataloader_config=DataLoaderConfiguration(non_blocking=cuda))


def make_optimizer(params: list[nn.Parameter], cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam(W); on CUDA the fused kernel (one launch for all parameters instead of several per tensor)."""
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (views of the live tensors, to be serialised at once, never kept)."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in module.state_dict().items() if k in trainable}


class BestWeights:
    """The best epoch's trainable weights, kept on disk rather than as a second copy in memory.

    For full fine-tuning that copy is as large as the model (+600 MB RSS at ViT-B/32 on CPU, the
    bulk of medvlm's excess over a bare loop). An epoch's weights are written only once training
    goes on past it (its next step would change them), so a best last epoch costs nothing, and an
    epoch whose resume checkpoint holds them keeps that file as a hard link instead. One file per
    epoch, `best-<epoch>.safetensors`: the one the last checkpoint names stays until a newer
    checkpoint names another, so a resume finds its own best weights even when a later best epoch
    was written after that checkpoint. In multi-process runs the main process writes beside the
    checkpoint for every rank; without a checkpoint folder each process keeps its own.
    """

    def __init__(self, folder: Path | None):
        self._tmp = tempfile.TemporaryDirectory(prefix="medvlm-best-") if folder is None else None
        self.shared = folder is not None
        self.folder = Path(self._tmp.name if self._tmp else folder)

    def path(self, epoch: int) -> Path:
        return self.folder / BEST_FILES.replace("*", str(names.epoch_number(epoch)))

    def save(self, module: nn.Module, epoch: int, checkpoint: Path | None = None) -> None:
        """Keep `checkpoint` (just written for `epoch`) as its best weights, or save the module's trainable weights."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(epoch).with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        if checkpoint is None:
            save_file(unshared(trainable_state(module)), str(tmp))
        else:
            try:
                os.link(checkpoint, tmp)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, self.path(epoch))

    def keep(self, *epochs: int | None) -> None:
        """Delete every best-weights file but those of `epochs`."""
        wanted = {self.path(e) for e in epochs if e is not None}
        for path in self.folder.glob(BEST_FILES):
            if path not in wanted:
                path.unlink(missing_ok=True)

    def restore(self, module: nn.Module, epoch: int) -> None:
        """Tensors only (safetensors): a planted file can at worst hold wrong numbers, never run code."""
        if self.path(epoch).is_file():
            module.load_state_dict(load_trainable(self.path(epoch)), strict=False)


class DeferredInterrupt:
    """Ctrl-C during training finishes the epoch, checkpoints it, then stops; a second Ctrl-C stops at once.

    Checkpoints come every `checkpoint_every` seconds, so an immediate stop would lose the work since
    the last one. Only Python's own Ctrl-C handler is replaced, and only in the main thread (the one
    that takes signals): an ignored SIGINT (a background job) or another handler stays as it was.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False

    def __enter__(self) -> DeferredInterrupt:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this epoch, once it is checkpointed; Ctrl-C again stops now and "
                    "loses the training since the last checkpoint")

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any process was interrupted: every rank must stop at the same epoch."""
        if accelerator.num_processes == 1:
            return self.requested
        return bool(accelerator.reduce(torch.tensor(float(self.requested), device=accelerator.device), "max"))


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _require_finite_weights(module: nn.Module) -> None:
    """NaN/inf already in the weights is a corrupt file, not a learning-rate problem: say so before any update.

    Called only when the first step's loss is not finite: scanning every tensor of a ViT-B up front
    (one reduction and one host sync per tensor) cost seconds per run on a CPU.
    """
    bad = [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingError(f"the model's weights contain NaN or inf before training ({len(bad)} tensor(s), e.g. "
                            f"{bad[0]}); the weights file is corrupt: download or export it again")


def freeze_unused(module: nn.Module, dataset: Dataset, device: torch.device) -> list[str]:
    """Freeze the trainable parameters that the module's output does not depend on; return their names.

    A strategy marks parameters by name (`partial`: both projections and the logit scale), and a
    task may not use them all (a linear head never runs the text tower). Left trainable, they would
    be counted in `trainable_params`, handed to the optimiser and checkpointed, yet never change.
    One forward and backward pass on two training samples, in eval mode (no dropout, no BatchNorm
    statistics update), finds the parameters that receive a gradient.
    """
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    inputs, _ = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_batch)))
    inputs = {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)
    was_training = module.training
    module.eval()
    with torch.enable_grad():
        module(inputs).float().sum().backward()
    module.train(was_training)
    unused = [name for name, p in trainable if p.grad is None]
    for _, p in trainable:
        p.requires_grad_(p.grad is not None)
        p.grad = None
    return unused



def _loader(dataset: Dataset, batch_size: int, cfg: RunConfig, sampler: Sampler | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate_batch,
                      num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(), drop_last=False)


@torch.no_grad()
def predict(accelerator: Accelerator, module: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs and targets of a loader, gathered across processes, in dataset order, on CPU."""
    module.eval()
    outs, targets = [], []
    for inputs, y in loader:
        with accelerator.autocast():
            out = module(inputs)
        out, y = accelerator.gather_for_metrics((out.float(), y))
        outs.append(out.cpu())
        targets.append(y.cpu())
    return torch.cat(outs), torch.cat(targets)


def evaluate(accelerator: Accelerator, objective: Objective, dataset: Dataset, cfg: RunConfig,
             module: nn.Module | None = None) -> tuple[float, dict[str, float], torch.Tensor, torch.Tensor]:
    loader = accelerator.prepare(_loader(dataset, cfg.eval_batch_size, cfg))
    outputs, targets = predict(accelerator, module or objective.module, loader)
    return float(objective.loss(outputs, targets)), objective.metrics(outputs, targets), outputs, targets


def epoch_line(number: int, epochs: int, row: dict[str, float], best_number: int, best_val: float) -> str:
    """`epoch 3/10: train_loss 0.41 · val_loss 0.39 · val_auc 0.81 · best val_loss 0.39 (epoch 3)`: epoch numbers
    as `names.epoch_number` counts them, the same as the metrics' steps."""
    values = " · ".join(f"{k} {v:.4f}" for k, v in row.items())
    return f"epoch {number}/{epochs}: {values} · best {names.VAL_LOSS} {best_val:.4f} (epoch {best_number})"


def fit(objective: Objective, train_set: Dataset, val_set: Dataset, cfg: RunConfig, accelerator: Accelerator,
        checkpoints: Checkpoints | None = None, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        on_resume: Callable[[list[dict[str, float]]], None] | None = None,
        on_checkpoint: Callable[[int], None] | None = None) -> FitResult:
    """Train `objective.module` with early stopping on validation loss; leaves the best weights loaded.

    The resume checkpoint is written at the end of an epoch once `cfg.checkpoint_every` seconds have
    passed since the last one (every epoch when 0) and when Ctrl-C stops training; at full fine-tuning
    it holds the weights and both AdamW moments (1.8 GB at ViT-B/32), too costly for every epoch. It
    is written before the epoch's metrics are reported (`on_checkpoint` hears of it), and `on_resume`
    receives the restored history, so a tracker can re-log epochs a kill cut off between the two. `on_epoch`
    gets the epoch's number (`names.epoch_number`, the step its metrics are logged at) and its metrics.
    """
    set_seed(cfg.seed)
    params = [p for p in objective.module.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"strategy '{cfg.strategy}' left no trainable parameters; check the zoo entry's partial/lora lists")
    optimizer = make_optimizer(params, cfg, accelerator.device)
    if cfg.compile:
        objective.module.compile()  # in place: same module, same state-dict keys for checkpoints and best weights
    module, optimizer, train_loader = accelerator.prepare(
        objective.module, optimizer, _loader(train_set, cfg.batch_size, cfg, EpochShuffle(len(train_set), cfg.seed)))
    val_loader = accelerator.prepare(_loader(val_set, cfg.eval_batch_size, cfg))
    main = accelerator.is_main_process

    start, best_val, best_epoch, bad_epochs, history = 0, float("inf"), -1, 0, []
    best = BestWeights(checkpoints.path.parent if checkpoints else None)
    writes_best = main or not best.shared
    unsaved_best = False  # the live weights are the best epoch's, and no file holds them yet
    checkpointed_best = None  # the best epoch named by the last checkpoint: its weights file must stay
    seen, train_time = 0, 0.0
    state = checkpoints.load() if checkpoints else None
    if state is not None:
        accelerator.unwrap_model(module).load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        start, best_val, best_epoch = state["epoch"] + 1, state["best_val"], state["best_epoch"]
        bad_epochs, history = state["bad_epochs"], state["history"]
        checkpointed_best = best_epoch
        if main:
            if best_epoch == state["epoch"]:  # a kill may have come before the link
                best.save(accelerator.unwrap_model(module), best_epoch, checkpoints.path)
            best.keep(best_epoch)  # later best epochs belong to the training this resume replays
        seen, train_time = state["seen"], state["train_time"]
        if on_resume is not None and main:
            on_resume(history)

    if main:
        log.info("training starts: %d trainable parameters, %d images per epoch, batch %d on %s",
                 sum(p.numel() for p in params), len(train_set), cfg.batch_size, accelerator.device)
    checkpointed_at = time.monotonic()
    with DeferredInterrupt() as interrupt:
        for epoch in range(start, cfg.epochs):
            if bad_epochs >= cfg.patience:
                if main:
                    log.info("early stop after epoch %d: %s has not improved for %d epochs; best epoch %d (%s %.4f)",
                             names.epoch_number(epoch - 1), names.VAL_LOSS, bad_epochs, names.epoch_number(best_epoch),
                             names.VAL_LOSS, best_val)
                break
            if unsaved_best and writes_best:  # this epoch's steps would overwrite the best weights
                best.save(accelerator.unwrap_model(module), best_epoch)
                best.keep(best_epoch, checkpointed_best)
            unsaved_best = False
            module.train()
            train_loader.set_epoch(epoch)  # Accelerate's loader re-sets the sampler from its own counter otherwise
            running, steps, t0 = torch.zeros((), device=accelerator.device), 0, time.perf_counter()
            bar = tqdm(train_loader, desc=f"epoch {names.epoch_number(epoch)}/{cfg.epochs}", leave=False,
                       disable=not accelerator.is_local_main_process or None)
            for inputs, targets in bar:
                with accelerator.accumulate(module):
                    with accelerator.autocast():
                        loss = objective.loss(module(inputs), targets)
                    if seen == 0 and not bool(torch.isfinite(loss)):  # before any update: the weights are the suspect
                        _require_finite_weights(module)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                running += loss.detach()
                steps += 1
                seen += int(targets.shape[0]) * accelerator.num_processes
                if steps % NAN_CHECK_EVERY == 0 and not torch.isfinite(running):
                    break
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            train_time += time.perf_counter() - t0
            train_loss = float(accelerator.reduce(running, "mean")) / max(steps, 1)
            if not np.isfinite(train_loss):
                raise TrainingError(f"training loss became {train_loss} in epoch {names.epoch_number(epoch)} (lr={cfg.lr}); "
                                    f"lower lr or use precision=fp32")
            outputs, val_targets = predict(accelerator, module, val_loader)
            val_loss = float(objective.loss(outputs, val_targets))
            if not np.isfinite(val_loss):
                raise TrainingError(f"validation loss became {val_loss} in epoch {names.epoch_number(epoch)} (lr={cfg.lr}); "
                                    f"lower lr or use precision=fp32")
            row = {names.TRAIN_LOSS: train_loss, names.VAL_LOSS: val_loss,
                   **{names.val(k): v for k, v in objective.metrics(outputs, val_targets).items()}}
            history.append(row)
            improved = val_loss < best_val
            if improved:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
            else:
                bad_epochs += 1
            stop = interrupt.agreed(accelerator)
            due = checkpoints is not None and (
                stop or cfg.checkpoint_every == 0 or time.monotonic() - checkpointed_at >= cfg.checkpoint_every)
            if due and main:
                checkpoints.save({"trainable": trainable_state(accelerator.unwrap_model(module)),
                                  "optimizer": optimizer.state_dict(), "rng": _rng_state(), "epoch": epoch,
                                  "best_val": best_val, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                                  "history": history, "seen": seen, "train_time": train_time})
                if improved:
                    best.save(accelerator.unwrap_model(module), epoch, checkpoints.path)
                best.keep(best_epoch)
                if on_checkpoint is not None:
                    on_checkpoint(names.epoch_number(epoch))
            if due:
                checkpointed_at, checkpointed_best = time.monotonic(), best_epoch
            unsaved_best = improved and not due
            if main:
                log.info(epoch_line(names.epoch_number(epoch), cfg.epochs, row, names.epoch_number(best_epoch),
                                    best_val))
            if on_epoch is not None and main:
                on_epoch(names.epoch_number(epoch), row)
            if stop:
                raise KeyboardInterrupt
    accelerator.wait_for_everyone()
    if best_epoch != len(history) - 1:  # when the last epoch was the best, its weights are already in place
        best.restore(accelerator.unwrap_model(module), best_epoch)
    objective.module = module
    return FitResult(best_epoch=best_epoch, best_val_loss=best_val, epochs_run=len(history),
                     images_per_s=seen / train_time if train_time > 0 else 0.0, history=history)
