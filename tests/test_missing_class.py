"""A validation split without every class logs NaN AUCs and the run goes on; a test split without one fails
in one line (exit 2, the run FAILED)."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medvlm.cli import main


def image_folder(root, missing: str):
    """train/val/test folders of classes a, b, c (2 images each); `missing` split lacks class c."""
    for split in ("train", "val", "test"):
        for cls in ("a", "b", "c"):
            if split == missing and cls == "c":
                continue
            for i in range(2):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), (40 * i + 80 * (cls == "b"), 10, 100 * (cls == "c"))).save(path)
    return root


def finetune(workdir, tiny_model_dir, dataset) -> int:
    return main(["finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", str(dataset), "--strategy", "linear",
                 "--epochs", "2", "--patience", "5", "--experiment", "missing"])


def only_run() -> mlflow.entities.Run:
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("missing").experiment_id])
    return run


def test_validation_split_without_a_class_logs_nan_aucs_with_a_warning(workdir, tiny_model_dir):
    with pytest.warns(UserWarning, match=r"class 2 has a single class in the evaluated labels.*NaN"):
        assert finetune(workdir, tiny_model_dir, image_folder(workdir / "ds", missing="val")) == 0
    run = only_run()
    assert run.info.status == "FINISHED"
    history = MlflowClient().get_metric_history(run.info.run_id, "val_auc")
    assert len(history) == 2 and all(math.isnan(m.value) for m in history)
    assert all(not math.isnan(m.value) for m in MlflowClient().get_metric_history(run.info.run_id, "val_acc"))
    assert 0 <= run.data.metrics["test_auc"] <= 1  # the test split has every class


def test_test_split_without_a_class_fails_in_one_line(workdir, tiny_model_dir, capsys):
    assert finetune(workdir, tiny_model_dir, image_folder(workdir / "ds", missing="test")) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines first, then the error
    errors = [line for line in err if line.startswith("medvlm: error")]
    assert errors == err[-1:] and "AUC undefined: class 2 has a single class in the evaluated labels (4 samples)" in err[-1]
    run = only_run()
    assert run.info.status == "FAILED" and "AUC undefined" in run.data.tags["medvlm.error"]
