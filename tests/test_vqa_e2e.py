"""Acceptance: `medvlm finetune --task vqa --strategy lora` on the real VQA-RAD with a tiny local model logs the
VQA metrics, taxonomy counts and examples table, and its registered model answers questions; frozen and
zero-shot runs on a SLAKE fixture in its native layout."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.config import build_config
from medvlm.data.vqa import VQA_RAD_IMAGES
from medvlm.errors import ConfigError
from medvlm.metrics.vqa_taxonomy import TAGS
from medvlm import names
from tests.conftest import SHARED_DATA
from tests.vqa_fixtures import write_slake

VQA_RAD = SHARED_DATA / "vqa_rad"
SMALL = ["--epochs", "2", "--batch_size", "16", "--vqa_hidden", "32", "--lr", "1e-3"]
CORE = {"acc", "f1_weighted", "acc_open", "f1_weighted_open", "acc_closed", "f1_weighted_closed", "oov"}
EXAMPLE_COLUMNS = {"image", "question", "answer", "prediction", "correct", "answer_type", "tag"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_mlflow_store):
    """One working directory and MLflow store for the module."""
    root = tmp_path_factory.mktemp("vqa-e2e")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", new_mlflow_store(root / "mlflow.db"))
        mp.setenv("MEDVLM_CACHE", str(root / "cache"))
        mp.setenv("MEDVLM_CHECKPOINTS", str(root / "checkpoints"))
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        yield root


def only_run(client: MlflowClient, strategy: str):
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id],  # the default experiment
                              f"tags.`medvlm.strategy` = '{strategy}'")
    assert len(runs) == 1
    return runs[0]


def examples(client: MlflowClient, run) -> pd.DataFrame:
    return client.load_table(run.info.experiment_id, "examples.json", run_ids=[run.info.run_id])


def check_test_results(client: MlflowClient, run) -> pd.DataFrame:
    """Every VQA metric the README lists is logged and agrees with the logged examples table."""
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["medvlm.task"] == "vqa"
    assert {f"test_{k}" for k in CORE} <= set(metrics)
    table = examples(client, run)
    assert EXAMPLE_COLUMNS <= set(table.columns) and len(table) == metrics[names.examples("test")]
    assert metrics["test_acc"] == pytest.approx(table["correct"].mean())
    closed = table["answer_type"] == "closed"
    assert metrics["test_acc_closed"] == pytest.approx(table.loc[closed, "correct"].mean())
    assert metrics["test_oov"] == table["oov"].sum()
    for tag in TAGS:
        assert metrics[f"test_err_{tag.replace('-', '_')}"] == (table["tag"] == tag).sum()
    assert (table["tag"] == "").sum() == table["correct"].sum()
    return table


@pytest.mark.skipif(not (VQA_RAD / "VQA_RAD Dataset Public.json").is_file(),
                    reason=f"real VQA-RAD not found at {VQA_RAD} (../shared/data beside the checkout, or set MEDVLM_SHARED_DATA)")
def test_lora_on_real_vqa_rad_logs_everything_and_registers_a_model_that_answers(store, tiny_model_dir):
    code = main(["finetune", "--task", "vqa", "--strategy", "lora", "--model", f"local-dir:{tiny_model_dir}",
                 "--dataset", "vqa_rad", "--data_root", str(SHARED_DATA), "--max_rows", "40", *SMALL])
    assert code == 0
    client = MlflowClient()
    run = only_run(client, "lora")
    table = check_test_results(client, run)
    assert {"test_acc_question_type_pres"} <= set(run.data.metrics)
    assert {"val_acc", "val_loss", "train_loss"} <= set(run.data.metrics)
    assert 0 < run.data.metrics["trainable_params"]

    name = "medvlm-tiny-clip-vqa_rad-vqa"
    version = client.get_model_version_by_alias(name, "best")
    assert version.tags["run_id"] == run.info.run_id
    model = mlflow.pyfunc.load_model(f"models:/{name}@best")
    folder = VQA_RAD / VQA_RAD_IMAGES
    inputs = pd.DataFrame({"image": [(folder / n).read_bytes() for n in table["image"][:6]],
                           "question": table["question"][:6]})
    answered = model.predict(inputs)
    assert list(answered["answer"]) == list(table["prediction"][:6])
    assert ((answered["score"] > 0) & (answered["score"] <= 1)).all()
    by_path = model.predict(pd.DataFrame({"image": [str(folder / table["image"][0])], "question": [table["question"][0]]}))
    assert by_path["answer"][0] == table["prediction"][0]


def test_frozen_and_zeroshot_on_slake_fixture(store, tiny_model_dir):
    write_slake(store / "slake", images_per_split={"train": 8, "val": 3, "test": 3})
    common = ["--task", "vqa", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "slake", "--data_root", str(store)]
    assert main(["finetune", "--strategy", "frozen", *common, *SMALL]) == 0
    cache_files = sorted(Path(store / "cache").glob("*.pt"))
    assert len(cache_files) == 2
    assert main(["finetune", "--strategy", "frozen", "--seed", "1", *common, *SMALL]) == 0
    assert sorted(Path(store / "cache").glob("*.pt")) == cache_files
    assert main(["zeroshot", *common]) == 0

    client = MlflowClient()
    zeroshot = only_run(client, "zeroshot")
    table = check_test_results(client, zeroshot)
    assert zeroshot.data.metrics["trainable_params"] == 0
    assert {"test_acc_content_type_organ", "test_acc_content_type_modality"} <= set(zeroshot.data.metrics)
    closed_answers = {"yes"}
    assert set(table.loc[table["answer_type"] == "closed", "prediction"]) <= closed_answers
    assert set(table.loc[table["answer_type"] == "open", "prediction"]) <= {"lung", "ct", "yes"}
    frozen_runs = client.search_runs([zeroshot.info.experiment_id], "tags.`medvlm.strategy` = 'frozen'")
    assert len(frozen_runs) == 2 and all(r.info.status == "FINISHED" for r in frozen_runs)
    for run in frozen_runs:
        check_test_results(client, run)
    trainable = np.array([r.data.metrics["trainable_params"] for r in frozen_runs])
    assert (trainable > 0).all() and (trainable == trainable[0]).all()


def test_linear_is_refused_for_vqa_with_a_pointer_to_frozen(tiny_model_dir):
    with pytest.raises(ConfigError, match="strategy=frozen"):
        build_config({"task": "vqa", "strategy": "linear", "model": f"local-dir:{tiny_model_dir}", "dataset": "slake"})
