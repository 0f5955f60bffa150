"""Run names people can tell apart: short model and dataset names, trial number and perturbed values,
and the precedence run_name parameter > MLFLOW_RUN_NAME > automatic name."""

from __future__ import annotations

import pytest

from medvlm.config import build_config
from medvlm.tracking.session import run_name


@pytest.fixture(autouse=True)
def _no_env_name(monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_NAME", raising=False)


@pytest.mark.parametrize(("model", "dataset", "expected"), [
    ("local-dir:/tmp/pytest-1/models0/tiny-clip", "breastmnist", "tiny-clip · breastmnist · lora"),
    ("local-dir:/tmp/models/tiny-clip/", "/data/ham10000_folders", "tiny-clip · ham10000_folders · lora"),
    ("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "hf:org/roco",
     "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 · roco · lora"),
    ("biomedclip", "chexpert.csv", "biomedclip · chexpert.csv · lora"),
])
def test_automatic_name_uses_short_model_and_dataset_names(model, dataset, expected):
    assert run_name(build_config({"model": model, "dataset": dataset, "strategy": "lora"})) == expected


def test_study_children_add_trial_number_and_perturbed_values():
    cfg = build_config({"model": "local-dir:/x/tiny-clip", "dataset": "breastmnist", "strategy": "lora"})
    names = {run_name(cfg, {"medvlm.trial": str(n), "medvlm.perturbed": f"lr=1.{n}e-05 seed={n}"}) for n in range(3)}
    assert names == {f"tiny-clip · breastmnist · lora · trial {n + 1} · lr=1.{n}e-05 seed={n}" for n in range(3)}


def test_explicit_run_name_beats_mlflow_run_name_beats_automatic(monkeypatch):
    cfg = build_config({"model": "biomedclip", "dataset": "breastmnist"})
    monkeypatch.setenv("MLFLOW_RUN_NAME", "from-env")
    assert run_name(cfg) == "from-env"
    assert run_name(build_config({"model": "biomedclip", "dataset": "breastmnist", "run_name": "mine"})) == "mine"
