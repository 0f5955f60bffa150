"""A clean Model Registry: study trials register nothing unless the study asks for its best trial,
and every version has a signature with named inputs, an input example that predicts, a description and the
run's final metrics on its logged model."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from medvlm.adapters.base import ALIAS, registered_name
from medvlm.catalog import TASKS
from medvlm.cli import main
from medvlm import names
from tests.conftest import BREAST_ROOT, needs_breastmnist

TASK = TASKS["classification"]


def lora_flags(model_dir, epochs: int) -> list[str]:
    return ["--model", f"local-dir:{model_dir}", "--dataset", "breastmnist", "--size", "28", "--data_root",
            str(BREAST_ROOT), "--strategy", "lora", "--epochs", str(epochs), "--patience", "5", "--lr", "1e-3"]


def best_epoch_value(client: MlflowClient, run_id: str, metric: str) -> float:
    """`metric` at the run's best epoch, read from its per-epoch history (the step is the epoch number)."""
    best = int(client.get_run(run_id).data.metrics[names.TRAIN_BEST_EPOCH])
    return next(m.value for m in client.get_metric_history(run_id, metric) if m.step == best)


def assert_complete_version(client: MlflowClient, version) -> None:
    """Signature with named inputs, an input example that predicts through the registered model, a description."""
    model_id = version.source.removeprefix("models:/")
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.signature.inputs.input_names() == ["image"]
    assert info.signature.outputs.input_names() == ["malignant", "normal or benign"]
    assert info.saved_input_example_info is not None
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    probs = model.predict(model.input_example)
    assert list(probs.columns) == ["malignant", "normal or benign"]
    assert probs.sum(axis=1).round(5).tolist() == [1.0]
    run_id = version.tags["run_id"]
    run = client.get_run(run_id)
    selection = best_epoch_value(client, run_id, TASK.selection_metric)
    test = run.data.metrics[TASK.primary_metric]
    for part in (run.data.params["model"], "sha256=", "breastmnist", "lora",
                 f"{TASK.selection_metric} = {selection:.4f}", f"{TASK.primary_metric} = {test:.4f}"):
        assert part in version.description, (part, version.description)


def test_adapter_models_annotate_predict_so_mlflow_does_not_warn() -> None:
    """MLflow checks `predict`'s type hints when a PythonModel subclass is defined, i.e. on import."""
    modules = ", ".join(f"medvlm.adapters.{m}" for m in ("base", "vqa", "retrieval", "generative_vqa"))
    out = subprocess.run([sys.executable, "-W", "always", "-c", f"import {modules}"], capture_output=True, text=True,
                         check=True)
    assert "Add type hints" not in out.stderr, out.stderr


@needs_breastmnist
def test_a_lora_run_registers_a_complete_version_whose_logged_model_shows_the_final_metrics(workdir, tiny_model_dir):
    assert main(["finetune", *lora_flags(tiny_model_dir, epochs=3)]) == 0
    client = MlflowClient()
    name = registered_name(f"local-dir:{tiny_model_dir}", "breastmnist", "classification")
    version = client.get_model_version_by_alias(name, ALIAS)
    assert_complete_version(client, version)

    run_id = version.tags["run_id"]
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == "tiny-clip-breastmnist-lora"
    on_model = {m.key: m.value for m in logged.metrics}
    run_metrics = client.get_run(run_id).data.metrics
    assert on_model[TASK.primary_metric] == pytest.approx(run_metrics[TASK.primary_metric])
    assert on_model[TASK.selection_metric] == pytest.approx(best_epoch_value(client, run_id, TASK.selection_metric))
    assert on_model["trainable_params"] == run_metrics["trainable_params"]
    # one copy of each metric record in the run's history: linking the model logged nothing twice
    assert len(client.get_metric_history(run_id, TASK.primary_metric)) == 1
    assert len(client.get_metric_history(run_id, "val_loss")) == 3
    assert not (workdir / "checkpoints").exists() or not list((workdir / "checkpoints").iterdir())


@needs_breastmnist
def test_study_trials_register_nothing_and_register_best_registers_exactly_the_best_trial(workdir, tiny_model_dir):
    client = MlflowClient()
    flags = [*lora_flags(tiny_model_dir, epochs=1), "--trials", "3"]
    assert main(["stability", *flags, "--study", "plain"]) == 0
    assert client.search_model_versions() == []
    default = client.get_experiment_by_name("Default").experiment_id
    logged = client.search_logged_models(experiment_ids=[default])
    assert len({m.name for m in logged}) == 3 and all("-trial-" in m.name for m in logged)

    assert main(["stability", *flags, "--study", "chosen", "--register_best"]) == 0
    versions = client.search_model_versions()
    assert len(versions) == 1
    version = versions[0]
    assert_complete_version(client, version)
    parent = client.search_runs([default], "tags.`medvlm.study` = 'chosen' and tags.`medvlm.study_role` = 'parent'")[0]
    children = client.search_runs([default], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    scores = {c.info.run_id: best_epoch_value(client, c.info.run_id, TASK.selection_metric) for c in children}
    assert len(scores) == 3 and version.tags["run_id"] == max(scores, key=scores.get)
    assert parent.data.tags["medvlm.registered_model"] == f"{version.name}/{version.version}"
    assert client.get_model_version_by_alias(version.name, ALIAS).version == version.version

    assert main(["stability", *flags, "--study", "chosen", "--register_best", "--summarize_only"]) == 0
    assert len(client.search_model_versions()) == 1  # summarising again registers nothing new
