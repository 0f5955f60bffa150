"""Kill a training run and resume it, for the tasks beyond classification (`tests/test_engine.py` kills and
resumes classification): no epoch goes missing from MLflow, and a two-process (torchrun, gloo) run resumed
after a kill reaches the same test metrics as one never interrupted.

The kill comes once the run's second epoch is checkpointed (its progress line is written after the
checkpoint); the run has many more epochs to go, so the test waits for a condition and never races the run's end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm import names
from tests.retrieval_fixtures import write_roco
from tests.vqa_fixtures import write_vqa_rad

EPOCHS = 40  # a tiny epoch takes tens of milliseconds: the kill after epoch 2 must come well before the end
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "medvlm.cli"]


def task_args(task: str, root: Path, model: Path) -> list[str]:
    common = ["finetune", "--model", f"local-dir:{model}", "--epochs", str(EPOCHS), "--patience", str(EPOCHS),
              "--lr", "1e-3", "--seed", "1", "--batch_size", "4", "--checkpoint_every", "0"]
    if task == "retrieval":
        data = write_roco(root / "roco", sizes={"train": 6, "validation": 2, "test": 3})
        return [*common, "--task", "retrieval", "--strategy", "partial", "--dataset", str(data)]
    data = write_vqa_rad(root / "vqa_rad", n_images=8)
    return [*common, "--task", "vqa", "--strategy", "frozen", "--dataset", str(data), "--vqa_hidden", "16",
            "--vqa_glimpses", "1"]


def start(argv: list[str], workdir: Path) -> subprocess.Popen:
    """The run in a subprocess; its stderr goes to a file (a full pipe would stall a long run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(workdir / f"stderr-{time.monotonic_ns()}.txt", "w+")
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def tail(proc: subprocess.Popen) -> str:
    return output(proc)[-3000:]


def kill_after_first_epochs(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process it started once its second epoch's progress line is written.

    The line comes after that epoch's checkpoint; it is read from the run's own stderr file, not from the
    store, whose copy of the metrics lags by MLflow's async buffering (a tiny run can finish meanwhile).
    """
    deadline = time.monotonic() + 600
    while f"medvlm: epoch 2/{EPOCHS}:" not in output(proc):
        assert proc.poll() is None, f"the run ended before it could be killed: {tail(proc)}"
        assert time.monotonic() < deadline, "no two epochs done in 10 minutes"
        time.sleep(0.05)
    for pid in [*descendants(proc.pid), proc.pid]:  # torchrun starts its workers in sessions of their own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first listed (read before any is killed: orphans lose the link)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def only_run(experiment: str | None = None):
    """The one run in `experiment`, or in whichever experiment the default-experiment rules chose."""
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()
           if (e.name == experiment if experiment else e.name != "uninterrupted")]
    (run,) = client.search_runs(ids)
    return run


def epochs_logged(run_id: str) -> dict[str, list[int]]:
    client = MlflowClient()
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in (names.TRAIN_LOSS, names.VAL_LOSS)}


def final_metrics(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if names.in_group(k, names.TEST)}


@pytest.mark.parametrize("task", ["retrieval", "vqa"])
def test_a_killed_run_resumes_with_no_epoch_lost(workdir, tiny_model_dir, task):
    args = task_args(task, workdir, tiny_model_dir)
    kill_after_first_epochs(start([sys.executable, "-m", "medvlm.cli", *args], workdir))
    killed = only_run()
    assert killed.info.status == "RUNNING"
    assert len(epochs_logged(killed.info.run_id)["train_loss"]) < EPOCHS

    assert main([*args, "--resume", killed.info.run_id]) == 0
    resumed = only_run()
    assert (resumed.info.run_id, resumed.info.status) == (killed.info.run_id, "FINISHED")
    ran = int(resumed.data.metrics[names.TRAIN_EPOCHS_RUN])
    assert epochs_logged(resumed.info.run_id) == {names.TRAIN_LOSS: list(range(1, ran + 1)), names.VAL_LOSS: list(range(1, ran + 1))}
    assert not list((workdir / "checkpoints").glob("*/last.*")), "a finished run clears its checkpoint"


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_resume_a_killed_retrieval_run_to_the_uninterrupted_result(workdir, tiny_model_dir):
    args = task_args("retrieval", workdir, tiny_model_dir)
    kill_after_first_epochs(start([*TORCHRUN, *args], workdir))
    killed = only_run()
    assert killed.info.status == "RUNNING"

    for extra in (["--resume", killed.info.run_id], ["--experiment", "uninterrupted"]):
        proc = start([*TORCHRUN, *args, *extra], workdir)
        assert proc.wait(timeout=900) == 0, tail(proc)
    resumed, fresh = only_run(), only_run("uninterrupted")
    assert (resumed.info.run_id, resumed.info.status) == (killed.info.run_id, "FINISHED")
    ran = int(resumed.data.metrics[names.TRAIN_EPOCHS_RUN])
    assert epochs_logged(resumed.info.run_id) == {names.TRAIN_LOSS: list(range(1, ran + 1)), names.VAL_LOSS: list(range(1, ran + 1))}
    assert final_metrics(resumed) and final_metrics(resumed) == pytest.approx(final_metrics(fresh), rel=1e-6, abs=1e-9)
