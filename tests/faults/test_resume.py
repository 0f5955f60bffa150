"""Resume faults: crafted checkpoints never execute, finished runs are refused, checkpoints are found by run id,
and Ctrl-C leaves a KILLED run with its checkpoint and the exact `--resume` command."""

from __future__ import annotations

import os
import pickle
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.config import build_config
from medvlm.engine.checkpoints import CHECKPOINT_FILE, Checkpoints, checkpoint_identity
from medvlm.errors import TrainingError
from medvlm.tracking.session import CHECKPOINTED_TAG, check_resumable, tracked_run
from tests.conftest import BREAST_ROOT, needs_breastmnist, read_until
from tests.test_errors import assert_one_line

pytestmark = needs_breastmnist
BREAST = ["--dataset", "breastmnist", "--size", "28", "--data_root", str(BREAST_ROOT)]


class Plant:
    """Unpickling this creates the marker file: proof that a checkpoint was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def interrupted_run(tiny_model_dir, **overrides):
    cfg = build_config({"model": f"local-dir:{tiny_model_dir}", "dataset": "breastmnist", "size": 28,
                        "data_root": str(BREAST_ROOT), "strategy": "linear", "epochs": 1, **overrides})
    with pytest.raises(RuntimeError), tracked_run(cfg) as run:
        raise RuntimeError("interrupted")
    return cfg, run.info.run_id


def test_a_crafted_last_pt_never_executes_on_resume(workdir, tiny_model_dir):
    _, run_id = interrupted_run(tiny_model_dir)
    marker = workdir / "pwned"
    folder = workdir / "checkpoints" / run_id
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(pickle.dumps({"payload": Plant(str(marker))}))
    torch.save({"payload": Plant(str(marker))}, folder / "last.tmp")
    assert main(["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "linear",
                 "--epochs", "1", "--resume", run_id]) == 0
    assert not marker.exists()
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_a_crafted_or_foreign_checkpoint_is_refused_in_one_line(workdir, tiny_model_dir, capsys):
    cfg, run_id = interrupted_run(tiny_model_dir)
    path = workdir / "checkpoints" / run_id / CHECKPOINT_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x04not a safetensors file")
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "linear", "--epochs", "1",
            "--resume", run_id]
    assert main(args) == 2
    assert_one_line(capsys.readouterr().err, f"checkpoint {path} is unreadable")
    assert MlflowClient().get_run(run_id).info.status == "FAILED"

    ours = checkpoint_identity(run_id, cfg.resolved(), {"sha256": "abc"})
    for field, foreign in (("run_id", {**ours, "run_id": "someone-else"}),
                           ("config", checkpoint_identity(run_id, {**cfg.resolved(), "lr": 1.0}, {"sha256": "abc"})),
                           ("pin", checkpoint_identity(run_id, cfg.resolved(), {"sha256": "other"}))):
        Checkpoints(workdir / "checkpoints", run_id, foreign).save({"epoch": 0, "w": torch.ones(2)})
        with pytest.raises(TrainingError, match=f"written for another .*\\({field} "):
            Checkpoints(workdir / "checkpoints", run_id, ours).load()
    Checkpoints(workdir / "checkpoints", run_id, ours).save({"epoch": 3, "w": torch.ones(2), "rng": (1, [2, 3])})
    assert Checkpoints(workdir / "checkpoints", run_id, ours).load()["rng"] == (1, [2, 3])


def test_resuming_a_finished_run_is_refused_and_changes_nothing(workdir, tiny_model_dir, capsys):
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "linear", "--epochs", "1"]
    assert main(args) == 0
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    before = (run.data.to_dictionary(), [a.path for a in client.list_artifacts(run.info.run_id)], run.info.end_time)
    capsys.readouterr()
    assert main([*args, "--resume", run.info.run_id]) == 2
    assert_one_line(capsys.readouterr().err, "already FINISHED")
    after = client.get_run(run.info.run_id)
    assert (after.data.to_dictionary(), [a.path for a in client.list_artifacts(run.info.run_id)], after.info.end_time) == before
    assert after.info.status == "FINISHED"


def test_checkpoints_are_found_by_run_id_or_the_places_looked_are_named(workdir, tiny_model_dir, monkeypatch):
    cfg, run_id = interrupted_run(tiny_model_dir)
    written_in = workdir / "checkpoints"
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # resumed from another folder, with another checkpoint_dir
    moved = build_config({**cfg.resolved(), "resume": run_id, "checkpoint_dir": "ckpts"})
    MlflowClient().set_tag(run_id, CHECKPOINTED_TAG, "1")  # the run had written a checkpoint
    from medvlm.errors import MedvlmError

    with pytest.raises(MedvlmError) as refused:
        check_resumable(moved)
    assert str(elsewhere / "ckpts") in str(refused.value) and str(written_in) in str(refused.value)
    (written_in / run_id).mkdir(parents=True)
    (written_in / run_id / CHECKPOINT_FILE).write_bytes(b"")
    check_resumable(moved)
    assert moved.checkpoint_dir == str(written_in)


def test_a_run_stopped_before_its_first_checkpoint_trains_again_from_the_start(workdir, tiny_model_dir):
    cfg, run_id = interrupted_run(tiny_model_dir)
    MlflowClient().log_metric(run_id, "train_loss", 0.5, step=0)  # an epoch trained, no checkpoint due yet
    assert main(["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "linear",
                 "--epochs", "1", "--resume", run_id]) == 0
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_ctrl_c_ends_the_run_killed_keeps_the_checkpoint_and_prints_the_resume_command(workdir, tiny_model_dir):
    epochs = 6
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "partial",
            "--epochs", str(epochs), "--patience", str(epochs), "--lr", "1e-3", "--seed", "1"]
    # A foreground command, as a user's Ctrl-C reaches it: SIGINT at its default. A suite started as a
    # background job (`pytest &` in a script, as CI may) has SIGINT ignored, and children inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "medvlm.cli", *args], cwd=workdir, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupt on the first epoch's progress line, read from the pipe as it is written (the store's
    # copy of the metrics lags by MLflow's buffering): five epochs are still to come, so the signal
    # lands while training goes on, however busy the machine.
    before = read_until(proc, f"medvlm: epoch 1/{epochs}:")
    proc.send_signal(signal.SIGINT)
    err = "".join(before) + proc.communicate(timeout=600)[1]
    assert proc.returncode == 130, err[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    lines = [line for line in err.splitlines() if line.startswith("medvlm: interrupted")]  # after the progress lines
    command = f"medvlm {shlex.join(args)} --resume {run.info.run_id}"
    assert lines == [f"medvlm: interrupted; run {run.info.run_id} is KILLED, its checkpoint kept; resume with: {command}"]
    assert err.rstrip().splitlines()[-1] == lines[0]
    assert "Traceback" not in err
    assert run.info.status == "KILLED"
    assert (workdir / "checkpoints" / run.info.run_id / CHECKPOINT_FILE).is_file()
    assert main(shlex.split(command)[1:]) == 0
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(1, epochs + 1))


def test_a_parameter_longer_than_mlflow_keeps_does_not_block_resume(workdir, tiny_model_dir):
    cfg, run_id = interrupted_run(tiny_model_dir, image_column="x" * 7000)
    assert len(MlflowClient().get_run(run_id).data.params["image_column"]) < 7000  # MLflow truncated it
    check_resumable(build_config({**cfg.resolved(), "resume": run_id}))
