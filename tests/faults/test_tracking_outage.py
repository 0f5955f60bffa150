"""A tracking server that dies mid-training: a bounded exit, one line with the exact `--resume` command,
the checkpoint kept; once the server is back, that command finishes the same run with every epoch once."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.engine.checkpoints import CHECKPOINT_FILE
from tests.conftest import BREAST_ROOT, needs_breastmnist, read_until
from tests.test_studies_distributed import free_port

pytestmark = needs_breastmnist
EPOCHS = 8  # a tiny epoch takes tens of milliseconds: the server must die well before the end


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on a SQLite store in `folder`; returns once /health answers."""
    log = open(folder / "server.log", "a")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[-2000:]
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def test_a_dead_tracking_server_gives_a_bounded_exit_with_the_resume_command(workdir, tiny_model_dir, monkeypatch,
                                                                           new_mlflow_store):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    new_mlflow_store(workdir / "server.db")  # the server's own store, its tables made already
    server = start_server(workdir, port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the product's own bound is ~15 s per request
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
            "--data_root", str(BREAST_ROOT), "--strategy", "partial", "--epochs", str(EPOCHS), "--patience",
            str(EPOCHS), "--lr", "1e-3", "--checkpoint_every", "0"]
    trainer = subprocess.Popen([sys.executable, "-m", "medvlm.cli", *args], cwd=workdir, env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(uri)
    try:
        # Stop training on the first epoch's progress line: with epochs still to come, the server goes
        # away while the run is training, however fast or busy the machine.
        before = read_until(trainer, f"medvlm: epoch 1/{EPOCHS}:")
        trainer.send_signal(signal.SIGSTOP)  # hold training still while the server goes away
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        run_id = run.info.run_id
        stop_server(server)
        trainer.send_signal(signal.SIGCONT)
        err = "".join(before) + trainer.communicate(timeout=300)[1]  # bounded: no 13-minute hang
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (last,) = [line for line in err.splitlines() if line.startswith("medvlm: error:")]
    assert last.startswith("medvlm: error: the tracking store") and f"run {run_id} is left RUNNING" in last
    command = f"medvlm {shlex.join(args)} --resume {run_id}"
    assert last.endswith(f"resume with: {command}")
    assert (workdir / "checkpoints" / run_id / CHECKPOINT_FILE).is_file()  # training progress kept

    server = start_server(workdir, port)
    try:
        assert main(shlex.split(command)[1:]) == 0
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "test_auc" in run.data.metrics
        assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(range(1, EPOCHS + 1))
    finally:
        stop_server(server)
