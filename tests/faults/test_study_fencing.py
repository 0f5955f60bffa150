"""A worker paused (SIGSTOP) past grace_period on the real PostgreSQL: every trial completes exactly once.

The paused worker's trial is declared lost and retried by the other worker; when the paused one
wakes up and finishes its copy, it must not complete the trial nor end its child run FINISHED, and
the parent's summary must count one child per trial.
"""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from mlflow.tracking import MlflowClient

from medvlm.studies.summary import metric_key
from tests.test_studies_distributed import (  # noqa: F401 - fixtures are used by name
    finished,
    fresh_database,
    pytestmark,
    start_worker,
    stop_in_a_running_trial,
    study_env,
    study_runs,
    tracking_server,
)


def test_a_worker_paused_past_grace_period_never_completes_a_trial_twice(study_env):
    with fresh_database() as storage:
        flags = ("--trials", "3", "--heartbeat_interval", "1", "--grace_period", "4")
        paused = start_worker(study_env, storage, "paused.log", *flags)
        lost = stop_in_a_running_trial(paused, study_env, storage, "paused.log")
        try:
            other = finished(start_worker(study_env, storage, "other.log", *flags), study_env, "other.log")
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        assert f"trial {lost} lost its worker; re-enqueued" in other
        woke = finished(paused, study_env, "paused.log")
        assert f"trial {lost} was declared lost" in woke and "Traceback" not in woke

        study = optuna.load_study(study_name=study_env["name"], storage=storage.replace("postgresql://", "postgresql+psycopg2://"))
        trials = study.trials
        assert trials[lost].state.name == "FAIL" and len(trials) == 4
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert len(complete) == 3 and len({tuple(sorted(t.params.items())) for t in complete}) == 3

    _, parent, children = study_runs(study_env["uri"], study_env["name"])
    by_trial = {int(c.data.tags["medvlm.trial"]): c for c in children}
    assert by_trial[lost].info.status == "KILLED"  # the paused copy never ends FINISHED
    assert sorted(n for n, c in by_trial.items() if c.info.status == "FINISHED") == sorted(t.number for t in complete)
    for t in complete:
        assert t.user_attrs["mlflow_run_id"] == by_trial[t.number].info.run_id
    aucs = [by_trial[t.number].data.metrics["test_auc"] for t in complete]
    group = children[0].data.tags["medvlm.group"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3
    assert parent.data.metrics[metric_key(group, "test_auc_n")] == 3
    assert parent.data.metrics[metric_key(group, "test_auc_mean")] == pytest.approx(sum(aucs) / 3, rel=1e-12)
