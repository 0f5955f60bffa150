"""Shared fixtures: the real data beside the checkout, a tiny local-dir model, an isolated MLflow store."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from medvlm.testing import save_tiny_open_clip

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDVLM_SHARED_DATA") or REPO.parent / "shared" / "data")
BREAST_ROOT = SHARED_DATA / "medmnist"

needs_breastmnist = pytest.mark.skipif(
    not (BREAST_ROOT / "breastmnist.npz").is_file(),
    reason=f"real BreastMNIST not found at {BREAST_ROOT} (../shared/data beside the checkout, or set MEDVLM_SHARED_DATA)",
)


def read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
    """Read `proc`'s stderr pipe as it is written until a line starts with `prefix`; return the lines read.

    The CLI's progress lines are a condition the fault tests can signal on: the store's copy of the
    same metrics lags by MLflow's async buffering. Fails if the process ended before the line came.
    """
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(prefix):
            break
    assert proc.poll() is None, f"ended before {prefix!r}:\n" + "".join(lines)[-2000:]
    return lines


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny open_clip model saved as a `local-dir:` folder (config + safetensors), random weights."""
    return save_tiny_open_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store file with every table created but no experiment yet, made once per session.

    Creating a store runs all of MLflow's schema migrations (about 10 s per store on a busy two-core
    machine, once per test otherwise). A copy of this file is that new store: MLflow adds the Default experiment when it first
    opens it, with the artifact location of the copy's working directory, as it does in a store it creates.
    """
    folder = tmp_path_factory.mktemp("mlflow-store")
    path = folder / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        MlflowClient(f"sqlite:///{path}").search_experiments()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    return path


@pytest.fixture(scope="session")
def new_mlflow_store(empty_mlflow_store) -> Callable[[Path], str]:
    """`new_mlflow_store(path)`: the tracking URI of a new SQLite store at `path` (a copy of the empty store)."""

    def make(path: Path) -> str:
        shutil.copyfile(empty_mlflow_store, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture
def bare_workdir(tmp_path, monkeypatch) -> Path:
    """An isolated working directory with its own MLflow SQLite store (not created yet: for tests that show a
    command never opens it), feature cache and checkpoints."""
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
def workdir(bare_workdir, new_mlflow_store) -> Path:
    """`bare_workdir` with its MLflow store created (a copy of the session's empty store)."""
    new_mlflow_store(bare_workdir / "mlflow.db")
    return bare_workdir


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
