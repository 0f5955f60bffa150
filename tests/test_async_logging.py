"""MLflow's async logger is buffered, so a run's closing flush does not wait out a 1 s queue poll."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

PROBE = ("import medvlm.tracking.session; from mlflow.environment_variables import "
         "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS as v; print(v.get())")


def buffering_seconds(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_medvlm_buffers_async_logging_unless_the_user_chose_a_value():
    assert buffering_seconds() == "1"
    assert buffering_seconds(MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS="3") == "3"


def test_buffered_async_metrics_all_reach_the_store_at_a_flush(workdir):
    import medvlm.tracking.session  # noqa: F401 - sets the buffering default

    with mlflow.start_run() as run:
        for step in range(5):
            mlflow.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step, synchronous=False)
        mlflow.flush_async_logging()
        history = MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
