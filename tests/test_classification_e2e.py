"""Acceptance for the foundation: `mlflow run` of zeroshot and every finetune strategy on the real
BreastMNIST with a tiny local-dir model, the tracked run's contents, and the registered adapter."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import BREAST_ROOT, REPO, needs_breastmnist

pytestmark = needs_breastmnist
STRATEGIES = ["zeroshot", "linear", "partial", "full", "lora"]
EPOCHS = 2
SPEC_TAGS = {"medvlm.model", "medvlm.domain", "medvlm.dataset", "medvlm.task", "medvlm.strategy", "medvlm.seed"}
TEST_METRICS = {"test_auc", "test_auc_hard", "test_acc", "test_f1", "test_f1_weighted", "test_balanced_acc"}
# LoRA runs the paper's prompt classifier with adapters on both towers and the paper code's prompt
EXTRA = {"lora": ["-P", "head=prompt", "-P", "lora_text=true", "-P", "prompt_set=paper"]}


@pytest.fixture(scope="module")
def project_runs(tmp_path_factory, new_mlflow_store, tiny_model_dir):
    """Run `mlflow run . -e …` once per strategy into one SQLite store; return (tracking uri, {strategy: run})."""
    root = tmp_path_factory.mktemp("mlflow-project")
    uri = new_mlflow_store(root / "mlflow.db")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # no run/experiment leaked by other tests
    env = {**clean, "MLFLOW_TRACKING_URI": uri, "MEDVLM_CACHE": str(root / "cache"),
           "MEDVLM_CHECKPOINTS": str(root / "ckpt"), "MLFLOW_EXPERIMENT_NAME": "e2e"}
    common = ["-P", f"model=local-dir:{tiny_model_dir}", "-P", "dataset=breastmnist", "-P", "size=28",
              "-P", f"data_root={BREAST_ROOT}"]
    for strategy in STRATEGIES:
        entry = "zeroshot" if strategy == "zeroshot" else "finetune"
        extra = [] if strategy == "zeroshot" else ["-P", f"strategy={strategy}", "-P", f"epochs={EPOCHS}",
                                                   "-P", "patience=5", "-P", "lr=1e-3", *EXTRA.get(strategy, [])]
        proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local",
                               "--experiment-name", "e2e", *common, *extra],
                              env=env, cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{strategy}: {proc.stderr[-3000:]}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    return uri, client, runs


def test_one_finished_run_per_strategy_and_no_strays(project_runs):
    _, client, runs = project_runs
    assert sorted(r.data.tags["medvlm.strategy"] for r in runs) == sorted(STRATEGIES)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert [e.name for e in client.search_experiments()] in (["e2e", "Default"], ["Default", "e2e"], ["e2e"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_run_has_spec_tracking(project_runs, strategy):
    _, client, runs = project_runs
    run = next(r for r in runs if r.data.tags["medvlm.strategy"] == strategy)
    tags, metrics = run.data.tags, run.data.metrics
    assert SPEC_TAGS <= set(tags)
    assert tags["medvlm.dataset"] == "breastmnist" and tags["medvlm.task"] == "classification"
    assert tags["mlflow.runName"].endswith(f"breastmnist · {strategy}")
    assert TEST_METRICS <= set(metrics)
    assert 0.0 <= metrics["test_auc"] <= 1.0
    assert "trainable_params" in metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "predictions.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/roc.png", "plots/confusion_matrix.png"} <= plots
    config = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json")
    assert config["strategy"] == strategy and config["size"] == 28
    table = client.load_table(run.info.experiment_id, "predictions.json", run_ids=[run.info.run_id])
    assert len(table) == 156
    np.testing.assert_allclose(table[["prob_0", "prob_1"]].sum(axis=1), 1.0, atol=1e-5)
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {"breastmnist/test"} <= inputs
    prompts = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/prompts.json")
    paper = strategy == "lora"
    assert prompts["prompt_set"] == ("paper" if paper else "ensemble")
    assert (prompts["prompts"] == [["this is a photo of malignant"], ["this is a photo of normal or benign"]]) == paper
    if strategy == "zeroshot":
        assert metrics["trainable_params"] == 0
        return
    assert "plots/learning_curves.png" in plots
    assert metrics["train_images_per_s"] > 0 and metrics["trainable_params"] > 0
    for key in ("train_loss", "val_loss", "val_auc"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key


def test_trainable_params_follow_the_strategy(project_runs):
    _, _, runs = project_runs
    n = {r.data.tags["medvlm.strategy"]: r.data.metrics["trainable_params"] for r in runs}
    assert n["linear"] < n["lora"] < n["full"]
    assert n["linear"] < n["partial"] < n["full"]


def test_registered_adapter_predicts_the_logged_probabilities(project_runs):
    _, client, runs = project_runs
    name = "medvlm-tiny-clip-breastmnist-classification"
    version = client.get_model_version_by_alias(name, "best")
    lora_run = next(r for r in runs if r.data.tags["medvlm.strategy"] == "lora")
    assert version.tags["run_id"] == lora_run.info.run_id
    meta = mlflow.artifacts.load_dict(f"models:/{name}@best/artifacts/medvlm.json")
    assert meta["head"] == "prompt" and meta["prompts"][0] == ["this is a photo of malignant"]
    model = mlflow.pyfunc.load_model(f"models:/{name}@best")
    with np.load(BREAST_ROOT / "breastmnist.npz") as npz:
        images = npz["test_images"]
    predicted = model.predict(pd.DataFrame({"image": list(images)}))
    assert list(predicted.columns) == ["malignant", "normal or benign"]
    table = client.load_table(lora_run.info.experiment_id, "predictions.json", run_ids=[lora_run.info.run_id])
    np.testing.assert_allclose(predicted.to_numpy(), table[["prob_0", "prob_1"]].to_numpy(), atol=1e-6)
