"""One experiment for `mlflow run`, `medvlm` and `medvlm report`, with a documented precedence
(explicit `experiment` > MLFLOW_EXPERIMENT_NAME > mlflow run's experiment > `Default`)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm import names
from medvlm.tracking.session import DEFAULT_EXPERIMENT, resolve_experiment
from tests.conftest import BREAST_ROOT, REPO, SHARED_DATA, needs_breastmnist


def _project_run(experiment: str, monkeypatch) -> str:
    """A run as `mlflow run` leaves it: created in `experiment`, its id in MLFLOW_RUN_ID."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    run = client.create_run(found.experiment_id if found else client.create_experiment(experiment))
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    return run.info.run_id


def test_precedence(workdir, monkeypatch):
    assert resolve_experiment("") == (DEFAULT_EXPERIMENT, None) == ("Default", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "env")
    assert resolve_experiment("") == ("env", None)
    assert resolve_experiment("explicit") == ("explicit", None)
    project = _project_run("env", monkeypatch)  # mlflow run itself honours MLFLOW_EXPERIMENT_NAME
    assert resolve_experiment("") == ("env", project) and "MLFLOW_RUN_ID" not in os.environ  # consumed
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    project = _project_run("cli", monkeypatch)  # mlflow run --experiment-name cli
    assert resolve_experiment("") == ("cli", project)
    project = _project_run("cli", monkeypatch)
    assert resolve_experiment("explicit") == ("explicit", None)  # MLflow cannot move a run: the project run says where
    assert "experiment 'explicit'" in MlflowClient().get_run(project).data.tags["medvlm.results_in"]


@needs_breastmnist
def test_mlflow_run_medvlm_and_report_share_the_default_experiment(workdir, tiny_model_dir, capsys, monkeypatch):
    params = {"model": f"local-dir:{tiny_model_dir}", "dataset": "breastmnist", "size": "28", "data_root": str(BREAST_ROOT),
              "strategy": "linear", "epochs": "1"}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "finetune", "--env-manager", "local",
                           *[arg for k, v in params.items() for arg in ("-P", f"{k}={v}")]],
                          env=env, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("MEDVLM_DATA", str(SHARED_DATA))  # the parent of every dataset, as well as the npz folder above
    assert main(["finetune", *[arg for k, v in params.items() if k != "data_root" for arg in (f"--{k}", v)]]) == 0
    assert main(["report", "--resamples", "100"]) == 0
    err = capsys.readouterr().err
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.experiment_id for r in runs} == {client.get_experiment_by_name("Default").experiment_id}
    (report,) = [r for r in runs if r.data.tags.get("medvlm.report") == "true"]
    assert report.data.metrics[names.REPORT_RUNS] == 2 and len(runs) == 3
    assert {r.data.params.get("data_root") for r in runs if r.info.run_id != report.info.run_id} == {str(BREAST_ROOT), str(SHARED_DATA)}
    assert f"report run {report.info.run_id} in experiment 'Default'" in err and report.info.artifact_uri in err
    assert mlflow.get_experiment_by_name("medvlm") is None
