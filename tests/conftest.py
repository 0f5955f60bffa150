"""Shared fixtures: the real data beside the checkout, a tiny local-dir model, an isolated MLflow store."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import mlflow
import pytest

from medvlm.testing import save_tiny_open_clip

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDVLM_SHARED_DATA") or REPO.parent / "shared" / "data")
BREAST_ROOT = SHARED_DATA / "medmnist"

needs_breastmnist = pytest.mark.skipif(
    not (BREAST_ROOT / "breastmnist.npz").is_file(),
    reason=f"real BreastMNIST not found at {BREAST_ROOT} (../shared/data beside the checkout, or set MEDVLM_SHARED_DATA)",
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny open_clip model saved as a `local-dir:` folder (config + safetensors), random weights."""
    return save_tiny_open_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An isolated working directory with its own MLflow SQLite store, feature cache and checkpoints."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.setenv("MEDVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDVLM_CHECKPOINTS", str(tmp_path / "checkpoints"))
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def offline(monkeypatch):
    """No network for the code under test, whatever the machine has: Hugging Face offline mode, and urllib
    (medvlm's reachability probe, MedMNIST downloads) through a closed local port."""
    from huggingface_hub import constants

    from medvlm import network

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dead = urllib.request.ProxyHandler({"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"})
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(dead))
    network._probe.cache_clear()
    yield
    network._probe.cache_clear()


@pytest.fixture
def encoded_batches(monkeypatch) -> list[int]:
    """Batch sizes the image tower encodes in every frozen model the test builds: counts encoding passes."""
    from medvlm.engine import features
    from medvlm.zoo import create_model

    encoded: list[int] = []

    def counting_create_model(name, device="cpu"):
        model = create_model(name, device)
        model.net.visual.register_forward_hook(lambda mod, inp, out: encoded.append(inp[0].shape[0]))
        return model

    monkeypatch.setattr(features, "create_model", counting_create_model)
    features.release_frozen_model()  # a frozen model another test left in this process has no hook
    return encoded
