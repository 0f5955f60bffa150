"""Two training processes (torchrun, gloo on CPU) make one MLflow run with complete, de-duplicated results."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import BREAST_ROOT, needs_breastmnist

pytestmark = needs_breastmnist


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_track_one_run(workdir, tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "medvlm.cli", "finetune",
         "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
         "--data_root", str(BREAST_ROOT), "--strategy", "lora", "--epochs", "2", "--experiment", "ddp"],
        cwd=workdir, env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(re.findall(r"^test_auc ", proc.stdout, re.MULTILINE)) == 1, "only rank 0 reports"
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    table = client.load_table(run.info.experiment_id, "predictions.json", run_ids=[run.info.run_id])
    with np.load(BREAST_ROOT / "breastmnist.npz") as npz:
        labels = npz["test_labels"][:, 0].tolist()
    assert table["label"].tolist() == labels, "gathered predictions keep dataset order, without padding duplicates"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    assert len(client.search_model_versions("name='medvlm-tiny-clip-breastmnist-classification'")) == 1
