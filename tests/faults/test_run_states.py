"""Honest run states: a failure while setting a run up, or an artifact store that refuses writes, ends the run
FAILED with `medvlm.error`, never FINISHED (MLflow's exit hook would otherwise end a left-open run FINISHED)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

import medvlm.tracking.session as session
from medvlm.cli import main
from tests.conftest import BREAST_ROOT, needs_breastmnist

pytestmark = needs_breastmnist


def only_run():
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


def test_a_set_up_failure_ends_the_run_failed(workdir, tiny_model_dir, monkeypatch):
    def refuse(run_id, cfg):
        raise RuntimeError("the store refused the params")

    monkeypatch.setattr(session, "log_config", refuse)
    with pytest.raises(RuntimeError):
        main(["zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
              "--data_root", str(BREAST_ROOT)])
    run = only_run()
    assert run.info.status == "FAILED" and run.data.tags["medvlm.error"] == "the store refused the params"


def test_an_artifact_store_that_refuses_writes_ends_the_run_failed(workdir, tiny_model_dir, capsys):
    blocker = workdir / "artifacts-here"
    blocker.write_text("a file where the artifact folder should be")
    MlflowClient().create_experiment("blocked", artifact_location=str(blocker / "store"))
    code = main(["zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT), "--experiment", "blocked"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("medvlm: error:")]
    assert code == 2 and len(errors) == 1 and "cannot write" in errors[0] and "Traceback" not in err
    run = only_run()
    assert run.info.status == "FAILED" and run.data.tags["medvlm.error"]
