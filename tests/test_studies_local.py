"""Studies in one process on the default SQLite storages: ablation on real BreastMNIST, resume,
failing trials, the `mlflow run` parent and the shared feature cache."""

from __future__ import annotations

import math
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

import medvlm.engine.features as features
from medvlm.cli import main
from medvlm.experiments import run_experiment
from medvlm.data.medmnist import load_medmnist
from medvlm.data.subsample import subsample
from medvlm.studies.plan import build_plan
from medvlm.errors import Superseded
from medvlm.studies.runner import Fence, claim, join_study, open_storage
from medvlm.studies.spec import load_study_config
from medvlm.studies.summary import metric_key
from medvlm.tracking.session import ensure_tracking
from tests.conftest import BREAST_ROOT, needs_breastmnist

FRACTIONS = (0.1, 0.25, 0.5)


def tiny_flags(model_dir, strategy: str = "linear") -> list[str]:
    return ["--model", f"local-dir:{model_dir}", "--dataset", "breastmnist", "--size", "28", "--data_root", str(BREAST_ROOT),
            "--epochs", "1", "--register_adapter", "false", "--strategy", strategy]


def children_of(client: MlflowClient, parent) -> list:
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def parent_run(client: MlflowClient, study: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`medvlm.study` = '{study}' and tags.`medvlm.study_role` = 'parent'")
    assert len(runs) == 1
    return runs[0]


def lineage(run) -> dict[str, tuple[str, int]]:
    """context -> (digest, n) of the datasets a run logged with mlflow.log_input."""
    out = {}
    for di in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        out[tags["mlflow.data.context"]] = (di.dataset.digest, int(tags["n"]))
    return out


@needs_breastmnist
def test_ablation_on_real_breastmnist_gives_a_parent_with_one_child_per_fraction(workdir, tiny_model_dir, capsys):
    argv = ["ablation", *tiny_flags(tiny_model_dir), "--fractions", ",".join(map(str, FRACTIONS)),
            "--subsample_val", "true", "--study", "abl"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "abl': 3 complete, 0 failed" in out and "10%" in out and "50%" in out  # the Table-6 view is printed

    client = MlflowClient()
    parent = parent_run(client, "abl")
    children = children_of(client, parent)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    full = load_medmnist("breastmnist", 28, BREAST_ROOT).splits
    by_fraction = {float(c.data.params["train_fraction"]): c for c in children}
    assert sorted(by_fraction) == list(FRACTIONS)
    for fraction, child in by_fraction.items():
        assert child.data.tags["medvlm.study"] == "abl" and child.data.tags["medvlm.study_kind"] == "ablation"
        seen = lineage(child)
        for split, n_full in (("train", 546), ("val", 78)):
            expected = subsample(full[split], fraction, seed=0)
            assert seen[split] == (expected.digest(), int(math.floor(fraction * n_full + 0.5)))
        assert seen["test"] == (full["test"].digest(), 156)  # the test split is never subsampled
        key = metric_key(child.data.tags["medvlm.group"], "test_auc_mean")
        assert parent.data.metrics[key] == pytest.approx(child.data.metrics["test_auc"])
    assert parent.info.status == "FINISHED" and parent.data.params["study.kind"] == "ablation"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/fraction_table.json", "summary/metric_vs_fraction.png", "summary/runs_box.png"} <= artifacts
    wide = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/summary/fraction_table.json")
    assert wide["columns"] == ["dataset", "model", "strategy", "10%", "25%", "50%"]

    # rerunning the command resumes the study: nothing left to do, no new child run
    assert main(argv) == 0
    assert "3 complete, 0 failed, 0 queued" in capsys.readouterr().out
    assert len(children_of(client, parent)) == 3
    assert main([*argv, "--summarize-only"]) == 0 and "10%" in capsys.readouterr().out
    assert client.get_run(parent.info.run_id).data.metrics == parent.data.metrics  # the same summary, rewritten
    study = optuna.load_study(study_name="abl", storage="sqlite:///optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


@needs_breastmnist
def test_stability_trials_on_a_frozen_encoder_encode_the_data_once(workdir, tiny_model_dir, capsys, monkeypatch):
    calls, builds = [], []
    encode, build = features.encode_dataset, features.create_model

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return encode(*args, **kwargs)

    def counting_builds(*args, **kwargs):
        builds.append(args[0])
        return build(*args, **kwargs)

    monkeypatch.setattr(features, "encode_dataset", counting)
    monkeypatch.setattr(features, "create_model", counting_builds)
    features.release_frozen_model()
    assert main(["stability", *tiny_flags(tiny_model_dir), "--trials", "3", "--study", "stab"]) == 0
    assert sorted(calls) == [78, 156, 546]  # val, test, train: encoded by the first trial only
    assert builds == [f"local-dir:{tiny_model_dir}"]  # the frozen model is loaded once per worker, not per trial
    assert len(list((workdir / "cache").glob("*.pt"))) == 3
    log = capsys.readouterr().err
    assert log.count("encoding 546 images") == 1 and log.count("from the feature cache") == 6
    assert log.count("re-using the frozen") == 2
    features.release_frozen_model()
    client = MlflowClient()
    parent = parent_run(client, "stab")
    children = children_of(client, parent)
    assert len(children) == 3 and len({c.data.params["seed"] for c in children}) == 3
    aucs = [c.data.metrics["test_auc"] for c in children]
    group = children[0].data.tags["medvlm.group"]
    mean = sum(aucs) / 3
    std = math.sqrt(sum((a - mean) ** 2 for a in aucs) / 2)
    assert parent.data.metrics[metric_key(group, "test_auc_mean")] == pytest.approx(mean)
    assert parent.data.metrics[metric_key(group, "test_auc_std")] == pytest.approx(std)
    assert parent.data.metrics[metric_key(group, "test_auc_n")] == 3
    assert "summary/std_per_model_strategy.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}


@needs_breastmnist
def test_a_failing_trial_is_recorded_and_the_study_goes_on_under_the_project_run(workdir, tiny_model_dir, capsys, monkeypatch):
    spec = workdir / "spec.yaml"
    (workdir / "unlabelled.csv").write_text("a,b\n1,2\n")  # found by the preflight, rejected when read
    spec.write_text(yaml.safe_dump({
        "name": "mixed", "defaults": {"model": f"local-dir:{tiny_model_dir}", "size": 28, "data_root": str(BREAST_ROOT),
                                      "strategy": "zeroshot"},
        "grid": {"dataset": [str(workdir / "unlabelled.csv"), "breastmnist"]}}))
    mlflow.set_experiment("project")
    project = MlflowClient().create_run(mlflow.get_experiment_by_name("project").experiment_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", project.info.run_id)  # what `mlflow run` passes
    assert main(["sweep", "--spec", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert "1 complete, 1 failed" in out and "no label column given for" in out and "unlabelled.csv" in out
    assert "trial 0 failed: no label column given for" in err
    study = optuna.load_study(study_name="mixed", storage="sqlite:///optuna.db")
    failed, done = study.trials
    assert failed.state.name == "FAIL" and "no label column given" in failed.user_attrs["error"]
    assert done.state.name == "COMPLETE" and done.value == pytest.approx(done.user_attrs["metrics"]["test_auc"])
    client = MlflowClient()
    assert study.user_attrs["mlflow_parent_run_id"] == project.info.run_id  # the project's run is the parent
    children = {Path(c.data.params["dataset"]).stem: c for c in children_of(client, client.get_run(project.info.run_id))}
    assert children["unlabelled"].info.status == "FAILED" and children["breastmnist"].info.status == "FINISHED"


@needs_breastmnist
def test_a_worker_that_lost_its_trial_never_completes_it_nor_finishes_its_run(workdir, tiny_model_dir, capsys):
    """A worker paused past grace_period: its trial was retried elsewhere; its own copy must not count twice."""
    flags = ["--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28", "--data_root", str(BREAST_ROOT),
             "--study", "late", "--heartbeat_interval", "1", "--grace_period", "3"]
    run_flags = {"model": f"local-dir:{tiny_model_dir}", "dataset": "breastmnist", "size": 28, "data_root": str(BREAST_ROOT),
                 "study": "late"}
    cfg = load_study_config("sweep", None, {"heartbeat_interval": 1, "grace_period": 3})
    plan = build_plan(cfg, run_flags)
    ensure_tracking()
    storage = open_storage(cfg)
    study, parent = join_study(storage, cfg, plan, "Default", None)
    trial_id = claim(storage, storage.get_study_id_from_name("late"))
    number = storage.get_trial(trial_id).number
    time.sleep(4)  # the paused worker: no heartbeat for longer than grace_period ...
    assert main(["sweep", *flags]) == 0  # ... so another worker declares the trial lost and runs its retry
    assert f"trial {number} lost its worker; re-enqueued" in capsys.readouterr().err

    mlflow.set_experiment(experiment_id=parent.experiment_id)  # the paused worker wakes up and finishes its copy
    with pytest.raises(Superseded):
        run_experiment(plan[0].config, nested=True, extra_tags={"mlflow.parentRunId": parent.run_id, "medvlm.trial": str(number)},
                       commit=Fence(storage, trial_id, "test_auc"))
    trials = optuna.load_study(study_name="late", storage="sqlite:///optuna.db").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    children = {c.data.tags["medvlm.trial"]: c for c in children_of(MlflowClient(), MlflowClient().get_run(parent.run_id))}
    assert children[str(number)].info.status == "KILLED" and "retried by another worker" in children[str(number)].data.tags["medvlm.error"]
    assert children[str(trials[1].number)].info.status == "FINISHED"
    assert trials[1].user_attrs["mlflow_run_id"] == children[str(trials[1].number)].info.run_id
    assert main(["sweep", *flags, "--summarize_only"]) == 0
    summary = MlflowClient().get_run(parent.run_id).data.metrics
    group = children[str(trials[1].number)].data.tags["medvlm.group"]
    assert summary[metric_key(group, "test_auc_n")] == 1
    assert summary[metric_key(group, "test_auc_mean")] == pytest.approx(trials[1].value)
