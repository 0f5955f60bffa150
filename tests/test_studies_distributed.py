"""Studies across worker processes on the real PostgreSQL (127.0.0.1:5432) and a real `mlflow server`.

Each test gets a fresh PostgreSQL database for Optuna (dropped afterwards); the module shares one
`mlflow server` backed by its own fresh PostgreSQL database, as a team's tracking server would be.
Skipped, with the reason, only where no PostgreSQL is reachable.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from medvlm.studies.summary import metric_key
from tests.conftest import BREAST_ROOT, needs_breastmnist

PG_HOST, PG_PORT, PG_USERS = "127.0.0.1", 5432, ("postgres", "root")


def _pg_user() -> tuple[str | None, str]:
    import psycopg2

    errors = []
    for user in PG_USERS:
        try:
            psycopg2.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", connect_timeout=3).close()
            return user, ""
        except psycopg2.Error as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[0]}")
    return None, "; ".join(errors)


PG_USER, PG_ERROR = _pg_user()
pytestmark = [
    pytest.mark.skipif(PG_USER is None, reason=f"no PostgreSQL reachable on {PG_HOST}:{PG_PORT} (users {PG_USERS}): "
                                               f"{PG_ERROR}; start one (.ci/run does) to run the distributed-study tests"),
    needs_breastmnist,
]


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; its URL; dropped afterwards."""
    import psycopg2

    name = f"medvlm_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> Iterator[str]:
    """A real `mlflow server` on a free localhost port, its store in PostgreSQL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with fresh_database() as db:
        port = free_port()
        log = open(root / "server.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db.replace("postgresql://", "postgresql+psycopg2://"),
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                    time.sleep(0.5)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            log.close()


@pytest.fixture
def study_env(tmp_path, tracking_server, tiny_model_dir) -> dict:
    """Files and environment shared by the workers of one study."""
    spec = tmp_path / "stability.yaml"
    spec.write_text(yaml.safe_dump({
        "name": f"dist-{uuid.uuid4().hex[:8]}", "kind": "stability", "sampler_seed": 0,
        "defaults": {"model": f"local-dir:{tiny_model_dir}", "dataset": "breastmnist", "size": 28,
                     "data_root": str(BREAST_ROOT), "strategy": "linear", "epochs": 1, "register_adapter": False,
                     "experiment": "studies"},
        "space": {"lr": {"factor": 2}, "seed": {"low": 0, "high": 9999}}}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "MEDVLM_CACHE": str(tmp_path / "cache"),
           "MEDVLM_CHECKPOINTS": str(tmp_path / "checkpoints"), "PYTHONUNBUFFERED": "1"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    return {"spec": spec, "env": env, "dir": tmp_path, "name": yaml.safe_load(spec.read_text())["name"],
            "uri": tracking_server}


def start_worker(ctx: dict, storage: str, log_name: str, *flags: str) -> subprocess.Popen:
    log = open(ctx["dir"] / log_name, "w")
    return subprocess.Popen([sys.executable, "-m", "medvlm.cli", "stability", "--spec", str(ctx["spec"]), "--storage", storage,
                             *flags], cwd=ctx["dir"], env=ctx["env"], stdout=log, stderr=subprocess.STDOUT)


def finished(worker: subprocess.Popen, ctx: dict, log_name: str, timeout: float = 400) -> str:
    worker.wait(timeout=timeout)
    text = (ctx["dir"] / log_name).read_text()
    assert worker.returncode == 0, text[-3000:]
    return text


def stop_in_a_running_trial(worker: subprocess.Popen, ctx: dict, storage: str, log_name: str) -> int:
    """SIGSTOP `worker` inside a trial and return the trial's number.

    The store is polled for a RUNNING child run; the worker is stopped and the trial checked again while
    nothing can move: a trial that ended between the poll and the signal is let go and the next one awaited.
    """
    client, deadline = MlflowClient(ctx["uri"]), time.monotonic() + 300
    optuna_url = storage.replace("postgresql://", "postgresql+psycopg2://")
    query = f"tags.`medvlm.study` = '{ctx['name']}' and attributes.status = 'RUNNING'"
    while True:
        assert worker.poll() is None and time.monotonic() < deadline, (ctx["dir"] / log_name).read_text()[-3000:]
        running = client.search_runs([e.experiment_id for e in client.search_experiments()], query)
        trials = [r for r in running if "medvlm.trial" in r.data.tags]
        if trials:
            os.kill(worker.pid, signal.SIGSTOP)
            run, number = trials[0], int(trials[0].data.tags["medvlm.trial"])
            study = optuna.load_study(study_name=ctx["name"], storage=optuna_url)
            if (client.get_run(run.info.run_id).info.status == "RUNNING"
                    and study.trials[number].state == optuna.trial.TrialState.RUNNING):
                return number
            os.kill(worker.pid, signal.SIGCONT)
        time.sleep(0.2)


def wait_for_line(worker: subprocess.Popen, ctx: dict, log_name: str, pattern: str) -> None:
    """Block until `pattern` appears in the worker's log (a condition, not a duration)."""
    deadline = time.monotonic() + 300
    while not re.search(pattern, (ctx["dir"] / log_name).read_text(), re.MULTILINE):
        assert worker.poll() is None and time.monotonic() < deadline, (ctx["dir"] / log_name).read_text()[-3000:]
        time.sleep(0.1)


def trials_run_by(log: str) -> set[int]:
    """Trial numbers a worker started, from its `medvlm: trial K/N: label` lines (K = number + 1)."""
    return {int(m.group(1)) - 1 for m in re.finditer(r"^medvlm: trial (\d+)/\d+: ", log, re.MULTILINE)}


def study_runs(uri: str, name: str) -> tuple:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`medvlm.study` = '{name}' and tags.`medvlm.study_role` = 'parent'")
    assert len(parents) == 1, f"{len(parents)} parent runs"
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, parent, children


def test_two_workers_on_postgresql_complete_one_stability_study(study_env):
    with fresh_database() as storage:
        # Both workers must take part, whatever their start-up times: the first holds still in its first
        # trial until the second has begun one (grace_period is far above any start-up, so nothing is lost).
        flags = ("--trials", "6", "--heartbeat_interval", "1", "--grace_period", "600")
        first = start_worker(study_env, storage, "worker1.log", *flags)
        wait_for_line(first, study_env, "worker1.log", r"^medvlm: trial \d+/\d+: ")
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = start_worker(study_env, storage, "worker2.log", *flags)
            wait_for_line(second, study_env, "worker2.log", r"^medvlm: trial \d+/\d+: ")
        finally:
            os.kill(first.pid, signal.SIGCONT)
        logs = [finished(w, study_env, f"worker{i}.log") for i, w in enumerate((first, second), 1)]

        ran = [trials_run_by(log) for log in logs]
        assert ran[0] | ran[1] == set(range(6)) and not ran[0] & ran[1], ran  # every trial once, by one worker
        assert ran[0] and ran[1], f"one worker ran everything: {ran}"

        study = optuna.load_study(study_name=study_env["name"], storage=storage.replace("postgresql://", "postgresql+psycopg2://"))
        trials = study.trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * 6
        assert len({tuple(sorted(t.params.items())) for t in trials}) == 6

    client, parent, children = study_runs(study_env["uri"], study_env["name"])
    assert len(children) == 6 and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(int(c.data.tags["medvlm.trial"]) for c in children) == list(range(6))
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 6
    by_trial = {int(c.data.tags["medvlm.trial"]): c for c in children}
    for t in trials:
        assert float(by_trial[t.number].data.params["lr"]) == pytest.approx(t.params["lr"])
    aucs = [c.data.metrics["test_auc"] for c in children]
    mean = sum(aucs) / 6
    std = math.sqrt(sum((a - mean) ** 2 for a in aucs) / 5)
    group = children[0].data.tags["medvlm.group"]
    assert parent.data.metrics[metric_key(group, "test_auc_mean")] == pytest.approx(mean, rel=1e-12)
    assert parent.data.metrics[metric_key(group, "test_auc_std")] == pytest.approx(std, rel=1e-9)
    assert parent.data.metrics[metric_key(group, "test_auc_n")] == 6


def test_killed_worker_trial_is_retried_and_never_duplicated(study_env):
    with fresh_database() as storage:
        flags = ("--trials", "3", "--heartbeat_interval", "1", "--grace_period", "4")
        worker = start_worker(study_env, storage, "killed.log", *flags)
        killed_trial = stop_in_a_running_trial(worker, study_env, storage, "killed.log")
        os.kill(worker.pid, signal.SIGKILL)  # kill -9 inside a running trial
        worker.wait()

        restart = finished(start_worker(study_env, storage, "restart.log", *flags), study_env, "restart.log")
        assert f"trial {killed_trial} lost its worker; re-enqueued" in restart

        study = optuna.load_study(study_name=study_env["name"], storage=storage.replace("postgresql://", "postgresql+psycopg2://"))
        trials = study.trials
        assert trials[killed_trial].state.name == "FAIL"
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial]
        assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
        assert retries[0].params == trials[killed_trial].params
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert len(complete) == 3 and len({tuple(sorted(t.params.items())) for t in complete}) == 3
        assert {t.params["cell"] for t in trials} == {0} and len(trials) == 4

    _, parent, children = study_runs(study_env["uri"], study_env["name"])
    status = {int(c.data.tags["medvlm.trial"]): c.info.status for c in children}
    assert status[killed_trial] == "KILLED"  # the dead worker's run, closed by the worker that noticed
    assert sorted(n for n, s in status.items() if s == "FINISHED") == sorted(t.number for t in complete)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3
