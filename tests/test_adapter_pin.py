"""A registered adapter pins its base weights: it refuses different weights and names missing ones."""

from __future__ import annotations

import shutil

import mlflow
import pytest

from medvlm.cli import main
from medvlm.errors import ModelError
from medvlm.testing import save_tiny_open_clip
from tests.conftest import BREAST_ROOT, needs_breastmnist

pytestmark = needs_breastmnist
NAME = "medvlm-base-breastmnist-classification"


@pytest.fixture
def registered(workdir):
    base = save_tiny_open_clip(workdir / "base", seed=0)
    assert main(["finetune", "--model", f"local-dir:{base}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT), "--strategy", "lora", "--epochs", "1"]) == 0
    return base


def test_alias_best_follows_validation_auc(registered):
    assert main(["finetune", "--model", f"local-dir:{registered}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT), "--strategy", "lora", "--epochs", "1", "--seed", "5"]) == 0
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{NAME}'")
    assert len(versions) == 2
    best = max(versions, key=lambda v: float(v.tags["val_auc"]))
    assert client.get_model_version_by_alias(NAME, "best").version == best.version


def test_refuses_other_base_weights(registered):
    save_tiny_open_clip(registered, seed=1)
    with pytest.raises(ModelError, match="differ from the ones this adapter was trained on"):
        mlflow.pyfunc.load_model(f"models:/{NAME}@best")


def test_names_missing_base_weights(registered):
    shutil.rmtree(registered)
    with pytest.raises(ModelError, match=str(registered)):
        mlflow.pyfunc.load_model(f"models:/{NAME}@best")
