"""Acceptance: `mlflow run . -e finetune -P task=vqa -P strategy=lora` with a tiny LLaVA folder on the real
VQA-RAD (a few rows) logs closed accuracy and open token recall, registers an adapter whose `predict`
answers by generation; `zeroshot` and `mlp` (projector only, on the LLaVA-Med release layout) finish too."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.data.vqa import VQA_RAD_IMAGES
from medvlm import names
from tests.conftest import REPO, SHARED_DATA
from tests.llava_tiny import VQA_RAD, llava_family  # noqa: F401  (fixture)

ROWS = ["-P", "max_rows=6", "-P", "epochs=1", "-P", "batch_size=3", "-P", "eval_batch_size=6", "-P", "max_new_tokens=4"]
GENERATIVE = {"test_closed_acc", "test_closed_unparsed", "test_open_exact", "test_open_recall", "test_open_f1",
              "test_open_bleu1", "test_acc", "trainable_params", names.examples("test")}


@pytest.fixture(scope="module")
def runs(llava_family, tmp_path_factory, new_mlflow_store):
    root = tmp_path_factory.mktemp("llava-e2e")
    uri = new_mlflow_store(root / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MEDVLM_CHECKPOINTS": str(root / "ckpt"),
           "MLFLOW_EXPERIMENT_NAME": "llava"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "finetune", "--env-manager", "local",
                           "--experiment-name", "llava", "-P", "task=vqa", "-P", f"model={llava_family['hf']}",
                           "-P", "dataset=vqa_rad", "-P", f"data_root={SHARED_DATA}", "-P", "strategy=lora",
                           "-P", "lora_parts=lm", "-P", "lr=1e-3", *ROWS], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for key in ("MLFLOW_TRACKING_URI", "MEDVLM_CHECKPOINTS", "MLFLOW_EXPERIMENT_NAME"):
            mp.setenv(key, env[key])
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        flags = dict(a.split("=", 1) for a in ROWS[1::2])
        training = ("epochs", "batch_size")  # finetune's only: zeroshot refuses them
        common = ["--task", "vqa", "--dataset", "vqa_rad", "--data_root", str(SHARED_DATA), "--experiment", "llava"]
        common += [part for k, v in flags.items() if k not in training for part in (f"--{k}", v)]
        assert main(["zeroshot", "--model", llava_family["hf"], *common]) == 0
        assert main(["finetune", "--strategy", "mlp", "--model", "llava-med", "--lr", "1e-3", *common,
                     *(part for k in training for part in (f"--{k}", flags[k]))]) == 0
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        found = client.search_runs([client.get_experiment_by_name("llava").experiment_id])
        yield client, {r.data.tags["medvlm.strategy"]: r for r in found}


def test_every_strategy_finishes_with_generative_metrics_and_examples(runs):
    client, by_strategy = runs
    assert sorted(by_strategy) == ["lora", "mlp", "zeroshot"]
    for strategy, run in by_strategy.items():
        metrics = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags["medvlm.task"] == "vqa", strategy
        assert GENERATIVE <= set(metrics) and run.data.tags["medvlm.judge"] == "none"
        table = client.load_table(run.info.experiment_id, "examples.json", run_ids=[run.info.run_id])
        assert len(table) == metrics[names.examples("test")] == 6 and table["prediction"].map(type).eq(str).all()
        closed = table["answer_type"] == "closed"
        assert metrics["test_closed_acc"] == pytest.approx(table.loc[closed, "correct"].mean())
        assert metrics["test_closed_unparsed"] == (~table.loc[closed, "yes_no_read"]).sum()
        assert metrics["test_open_recall"] == pytest.approx(table.loc[~closed, "token_recall"].mean())
        assert (metrics["trainable_params"] > 0) == (strategy != "zeroshot")
    for strategy in ("lora", "mlp"):
        run_id = by_strategy[strategy].info.run_id
        assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1]
        assert by_strategy[strategy].data.tags["medvlm.registered_model"].startswith("medvlm-")
    assert by_strategy["mlp"].data.tags["medvlm.domain"] == "medical"


def test_registered_lora_adapter_answers_questions_by_generation(runs, llava_family):
    client, by_strategy = runs
    run = by_strategy["lora"]
    name = "medvlm-tiny-llava-vqa_rad-vqa"
    assert client.get_model_version_by_alias(name, "best").tags["run_id"] == run.info.run_id
    model = mlflow.pyfunc.load_model(f"models:/{name}@best")
    table = client.load_table(run.info.experiment_id, "examples.json", run_ids=[run.info.run_id])
    folder = VQA_RAD / VQA_RAD_IMAGES
    answered = model.predict(pd.DataFrame({"image": [(folder / n).read_bytes() for n in table["image"][:3]],
                                           "question": table["question"][:3]}))
    assert list(answered["answer"]) == list(table["prediction"][:3])
    projector = mlflow.pyfunc.load_model("models:/medvlm-llava-med-vqa_rad-vqa@best")
    one = projector.predict(pd.DataFrame({"image": [str(folder / table["image"][0])], "question": ["Is there a mass?"]}))
    assert isinstance(one["answer"][0], str)
