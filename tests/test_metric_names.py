"""Metric keys in one scheme (`medvlm.names`), epochs numbered from 1, and only the params that apply."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from medvlm.catalog import STRATEGY_KINDS
from medvlm.cli import main
from medvlm.config import RunConfig
from medvlm import names
from tests.conftest import BREAST_ROOT, needs_breastmnist

EPOCHS = 3
LORA_PARAMS = {"lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_text", "lora_parts"}


def finished_run(strategy: str, tiny_model_dir) -> object:
    entry = ["zeroshot"] if strategy == "zeroshot" else ["finetune", "--strategy", strategy, "--epochs", str(EPOCHS),
                                                         "--patience", str(EPOCHS)]
    assert main([*entry, "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT)]) == 0
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()],
                                      filter_string=f"tags.`medvlm.strategy` = '{strategy}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    return runs[0]


@needs_breastmnist
def test_a_finetune_run_logs_every_metric_in_a_group_and_epochs_from_one(workdir, tiny_model_dir):
    run = finished_run("lora", tiny_model_dir)
    client = MlflowClient()
    metrics = run.data.metrics
    assert {k for k in metrics if names.group_of(k) is None} == set()
    assert {names.group_of(k) for k in metrics} == {names.TRAIN, names.VAL, names.TEST, names.COST}
    assert {names.TRAINABLE_PARAMS, names.TRAIN_IMAGES_PER_S, names.TRAIN_LOSS, names.VAL_LOSS, names.test("auc")} <= set(metrics)
    ran = int(metrics[names.TRAIN_EPOCHS_RUN])
    for key in (names.TRAIN_LOSS, names.VAL_LOSS, names.val("auc")):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(1, ran + 1)), key
    best = int(metrics[names.TRAIN_BEST_EPOCH])
    val_losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, names.VAL_LOSS)}
    assert val_losses[best] == min(val_losses.values()), "train_best_epoch is the step of the lowest val_loss"
    assert LORA_PARAMS - {"lora_parts"} <= set(run.data.params), "a classification LoRA run logs its LoRA settings"


@needs_breastmnist
def test_a_linear_run_logs_no_lora_params_and_a_zeroshot_run_no_training_params(workdir, tiny_model_dir):
    linear = finished_run("linear", tiny_model_dir)
    assert not LORA_PARAMS & set(linear.data.params)
    assert {"lr", "epochs", "head_init"} <= set(linear.data.params) and "register_adapter" not in linear.data.params
    assert names.COST_ENCODE_IMAGES_PER_S in linear.data.metrics
    zeroshot = finished_run("zeroshot", tiny_model_dir)
    assert not {"lr", "epochs", "batch_size", "weight_decay", *LORA_PARAMS} & set(zeroshot.data.params)
    assert {"model", "dataset", "size", "seed"} <= set(zeroshot.data.params)
    assert all(names.group_of(k) is not None for k in zeroshot.data.metrics)


@pytest.mark.parametrize("strategy", sorted(STRATEGY_KINDS))
def test_params_apply_as_their_field_metadata_and_the_strategy_capabilities_say(strategy):
    task = "vqa" if strategy in ("frozen", "mlp") else "classification"
    cfg = RunConfig(model="m", dataset="d", task=task, strategy=strategy)
    logged = set(cfg.applicable())
    assert ("lr" in logged) == STRATEGY_KINDS[strategy].trains
    assert ("register_adapter" in logged) == STRATEGY_KINDS[strategy].produces_adapter
    assert bool(LORA_PARAMS & logged) == (strategy == "lora")
    assert ("vqa_hidden" in logged) == (task == "vqa" and STRATEGY_KINDS[strategy].trains)
    assert "caption_column" not in logged and "subset" not in logged  # retrieval's own
    assert {"model", "dataset", "task", "strategy", "seed"} <= logged


def test_group_of_reads_the_prefix_and_knows_specs_cost_names():
    assert [names.group_of(k) for k in ("train_loss", "val_auc", "test_image_to_text_R1", "cost_encode_s",
                                        "data_answer_vocab", "trainable_params", "train_images_per_s",
                                        "best_epoch", "vocab_size")] == \
        ["train", "val", "test", "cost", "data", "cost", "cost", None, None]
    assert names.bare("test_auc_hard") == "auc_hard" and names.bare("trainable_params") == "trainable_params"
