"""Bad input: one clear line, a non-zero exit, and a FAILED MLflow run (with what was logged kept)."""

from __future__ import annotations

import socket
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from tests.conftest import BREAST_ROOT, needs_breastmnist


def write_breast_npz(folder, labels_train=None, n_val=4):
    """A BreastMNIST-layout fixture (28x28) with controllable labels and split sizes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = np.array(labels_train if labels_train is not None else [0, 1] * 6, dtype=np.uint8)[:, None]
    arrays = {
        "train_images": rng.integers(0, 256, (len(train_labels), 28, 28), dtype=np.uint8), "train_labels": train_labels,
        "val_images": rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8),
        "val_labels": (np.arange(n_val) % 2).astype(np.uint8)[:, None],
        "test_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(6) % 2).astype(np.uint8)[:, None],
    }
    np.savez(folder / "breastmnist.npz", **arrays)
    return folder


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def only_run():
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    assert len(runs) == 1
    return runs[0]


def assert_one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("medvlm: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_model(workdir, capsys):
    code, err = run_cli(capsys, "zeroshot", "--model", "no-such-clip", "--dataset", "breastmnist")
    assert code == 2
    assert_one_line(err, "unknown model 'no-such-clip'", "medvlm models")
    run = only_run()
    assert run.info.status == "FAILED"
    assert "unknown model" in run.data.tags["medvlm.error"]
    assert run.data.params["model"] == "no-such-clip"


def test_unknown_dataset(workdir, capsys, tiny_model_dir):
    code, err = run_cli(capsys, "zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "nosuchmnist")
    assert code == 2
    assert_one_line(err, "unknown dataset 'nosuchmnist'")
    assert only_run().info.status == "FAILED"


def test_missing_npz_names_file_and_folder(workdir, capsys, tiny_model_dir):
    empty = workdir / "data"
    empty.mkdir()
    code, err = run_cli(capsys, "zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist",
                        "--size", "64", "--data_root", str(empty))
    assert code == 2
    assert_one_line(err, "breastmnist_64.npz", str(empty), "data_root")
    assert only_run().info.status == "FAILED"


@pytest.mark.parametrize("npz, needles", [
    (dict(labels_train=[0, 1, 7, 1]), ("7", "train")),  # a label out of range
    (dict(n_val=0), ("val", "empty")),  # an empty split
], ids=["label-out-of-range", "empty-split"])
def test_bad_npz_content(workdir, capsys, tiny_model_dir, npz, needles):
    root = write_breast_npz(workdir / "data", **npz)
    code, err = run_cli(capsys, "finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist",
                        "--size", "28", "--data_root", str(root), "--strategy", "linear")
    assert code == 2
    assert_one_line(err, *needles)
    assert only_run().info.status == "FAILED"


def test_empty_split_after_filtering(workdir, capsys, tiny_model_dir):
    """A multi-label table whose test rows are all uncertain: the `ignore` policy filters them all out."""
    from PIL import Image

    rows = ["image,finding_a,finding_b,split"]
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        Image.fromarray(np.full((8, 8), i * 20, np.uint8)).save(workdir / f"img{i}.png")
        a, b = ("-1", "-1") if split == "test" else (str(i % 2), str((i + 1) % 2))
        rows.append(f"img{i}.png,{a},{b},{split}")
    (workdir / "labels.csv").write_text("\n".join(rows) + "\n")
    code, err = run_cli(capsys, "zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "labels.csv",
                        "--label_columns", "finding_a,finding_b", "--label_policy", "ignore")
    assert code == 2
    assert_one_line(err, "test")
    assert only_run().info.status == "FAILED"


@needs_breastmnist
def test_nan_loss_fails_the_run_and_keeps_the_logged_params(workdir, capsys, tiny_model_dir):
    code, err = run_cli(capsys, "finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist",
                        "--size", "28", "--data_root", str(BREAST_ROOT), "--strategy", "full", "--lr", "1e30",
                        "--epochs", "2")
    assert code == 2
    assert_one_line(err, "loss", "lower lr")
    run = only_run()
    assert run.info.status == "FAILED"
    assert run.data.params["lr"] == "1e+30"
    assert "trainable_params" in run.data.metrics


@pytest.mark.parametrize("args, needle", [
    (["--lr", "abc"], "invalid parameter lr='abc'"),
    (["--strategy", "lorra"], "invalid parameter strategy='lorra'"),
    (["--epochs", "0"], "invalid parameter epochs"),
    (["--size", "100"], "must be one of 28, 64, 128, 224"),
    (["--no-such-flag", "1"], "unrecognized arguments"),
])
def test_invalid_parameter_starts_no_run(workdir, capsys, args, needle):
    code, err = run_cli(capsys, "finetune", "--model", "clip-vit-b32", "--dataset", "breastmnist",
                        "--strategy", "lora", *args)
    assert code == 2
    assert_one_line(err, needle)
    assert not (workdir / "mlflow.db").exists() or not MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()])


def test_unreachable_tracking_server(workdir, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    code, err = run_cli(capsys, "zeroshot", "--model", "clip-vit-b32", "--dataset", "breastmnist")
    assert code == 2
    assert_one_line(err, f"127.0.0.1:{port}", "MLFLOW_TRACKING_URI")


def test_console_script_exit_code(workdir):
    proc = subprocess.run([sys.executable, "-m", "medvlm.cli", "finetune", "--model", "x", "--dataset", "y",
                           "--strategy", "zeroshot"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "finetune needs strategy=" in proc.stderr
    assert mlflow.get_tracking_uri()
