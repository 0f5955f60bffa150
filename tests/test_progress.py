"""Progress survives a log file: one `logging` line per epoch on stderr and a closing summary line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from mlflow.tracking import MlflowClient

from tests.conftest import BREAST_ROOT, REPO, needs_breastmnist

EPOCHS = 2
MLFLOW_REGISTRY_LINES = ("Successfully registered model", "Created version")


@needs_breastmnist
def test_finetune_to_a_log_file_has_one_line_per_epoch_and_a_summary(tmp_path, tiny_model_dir, new_mlflow_store):
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri,
           "MEDVLM_CACHE": str(tmp_path / "cache"), "MEDVLM_CHECKPOINTS": str(tmp_path / "ckpt"),
           "PYTHONPATH": str(REPO)}
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:
        proc = subprocess.run([sys.executable, "-m", "medvlm.cli", "finetune", "--model", f"local-dir:{tiny_model_dir}",
                               "--dataset", "breastmnist", "--size", "28", "--data_root", str(BREAST_ROOT),
                               "--strategy", "lora", "--epochs", str(EPOCHS), "--patience", "5", "--lr", "1e-3"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=600)
    text = log_file.read_text()
    assert proc.returncode == 0, text[-3000:]
    epoch_lines = re.findall(rf"^medvlm: epoch (\d+)/{EPOCHS}: train_loss [\d.]+ · val_loss [\d.]+ · val_auc [\d.]+ .*"
                             r"· best val_loss [\d.]+ \(epoch \d\)$", text, re.M)
    assert epoch_lines == [str(e) for e in range(1, EPOCHS + 1)], text[-3000:]
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("Default").experiment_id])[0]
    assert run.info.run_name == "tiny-clip · breastmnist · lora"
    summary = [line for line in text.splitlines() if line.startswith(f"medvlm: run {run.info.run_id} ")]
    assert len(summary) == 1, text[-3000:]
    assert f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in summary[0]
    registered = run.data.tags["medvlm.registered_model"]
    assert f"registered {registered.replace('/', ' version ')} (@best is version" in summary[0]
    assert "\r" not in text  # no bar redraws in a file
    # the run's page describes it: what ran, its test results, the training and the registered version
    note = run.data.tags["mlflow.note.content"].split("  \n")
    assert note[0] == f"lora · local-dir:{tiny_model_dir} · breastmnist (classification)."
    assert note[1].startswith(f"Test: test_auc {run.data.metrics['test_auc']:.4f}, test_acc ")
    assert note[2] == f"Trained {EPOCHS} epochs, kept epoch {int(run.data.metrics['train_best_epoch'])}; " \
                      f"{int(run.data.metrics['trainable_params']):,} trainable parameters."
    assert note[3] == f"Registered as {registered.replace('/', ' version ')}."
    # nothing else: no library warnings or notices a user must learn to skip (MLflow's own registry lines aside)
    others = [line for line in text.splitlines() if not line.startswith("medvlm: ")]
    assert all(line.startswith(MLFLOW_REGISTRY_LINES) for line in others), others


def test_progress_lines_are_not_repeated_by_a_root_handler_a_library_installed(capsys):
    import logging

    from medvlm.progress import log, setup_logging

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # what logging.basicConfig() adds when a library calls logging.warning()
    root.addHandler(handler)
    try:
        setup_logging()
        log.info("epoch 1/1: train_loss 0.5")
    finally:
        root.removeHandler(handler)
    assert capsys.readouterr().err.count("epoch 1/1: train_loss 0.5") == 1
