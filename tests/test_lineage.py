"""Lineage and operations: dataset inputs carry their schema and class counts, every run names the
medvlm version and commit it ran, and `system_metrics` turns on MLflow's system metrics."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from mlflow.tracking import MlflowClient

import medvlm
from medvlm.cli import main
from tests.conftest import BREAST_ROOT, REPO, needs_breastmnist


@needs_breastmnist
def test_a_direct_run_logs_profiled_inputs_provenance_and_system_metrics(workdir, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # the run lasts seconds: many samples
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    # The commit the run starts from: read before it, as a commit made while the suite runs moves HEAD.
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert main(["zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT), "--system_metrics"]) == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])

    assert run.data.tags["medvlm.version"] == medvlm.__version__
    if head.returncode == 0:  # a source checkout; an installed copy outside git has no commit to name
        assert run.data.tags["medvlm.git_commit"] == head.stdout.strip()
        assert run.data.tags["medvlm.git_dirty"] in ("true", "false")

    inputs = {di.dataset.name: di.dataset for di in run.inputs.dataset_inputs}
    test = inputs["breastmnist/test"]
    columns = json.loads(test.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in columns] == [("image", "binary"), ("label", "long")]
    with np.load(BREAST_ROOT / "breastmnist.npz") as npz:
        counts = np.bincount(npz["test_labels"].reshape(-1))
    profile = json.loads(test.profile)
    assert profile["rows"] == counts.sum() == 156
    assert profile["class_counts"] == {"malignant": int(counts[0]), "normal or benign": int(counts[1])}

    assert any(key.startswith("system/") for key in run.data.metrics), sorted(run.data.metrics)
