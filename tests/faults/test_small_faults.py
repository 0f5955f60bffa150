"""Smaller faults: a full disk under the feature cache, a one-class training split, transient storage errors."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from optuna.exceptions import StorageInternalError
from PIL import Image

from medvlm.cli import main
from medvlm.data.base import TensorRows
from medvlm.data.content import cache_root
from medvlm.engine.features import cached_features, feature_key
from medvlm.errors import DataError
from medvlm.studies.runner import retrying
from medvlm.zoo import create_model


def test_a_full_disk_under_the_feature_cache_is_one_line(workdir, tiny_model_dir):
    clip = create_model(f"local-dir:{tiny_model_dir}")
    rows = TensorRows(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    path = cache_root() / f"{feature_key(clip, rows.digest(), 'image_embedding')}.pt"
    path.parent.mkdir(parents=True)
    path.with_suffix(f".{os.getpid()}.tmp").symlink_to("/dev/full")  # every write there: no space left
    with pytest.raises(DataError, match="cannot write the feature cache .*free disk space"):
        cached_features(clip, rows, 4, torch.device("cpu"))
    assert not path.exists()


def test_a_one_class_training_split_warns(workdir, tiny_model_dir, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i, (split, label) in enumerate([("train", "a")] * 6 + [("val", "a"), ("val", "b"), ("test", "a"), ("test", "b")]):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(workdir / f"{i}.png")
        rows.append({"image": f"{i}.png", "label": label, "split": split})
    pd.DataFrame(rows).to_csv(workdir / "labels.csv", index=False)
    assert main(["finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", str(workdir / "labels.csv"),
                 "--label_columns", "label", "--strategy", "linear", "--epochs", "1"]) == 0
    assert "training split of labels holds a single class (['a'])" in capsys.readouterr().err


def test_transient_storage_errors_are_retried_with_backoff_then_given_up(capsys):
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StorageInternalError("connection reset")
        return "told"

    assert retrying(flaky, "trial 0") == "told" and len(calls) == 3
    assert capsys.readouterr().err.count("storage error (connection reset); retrying") == 2
    with pytest.raises(StorageInternalError):
        retrying(lambda: (_ for _ in ()).throw(StorageInternalError("down")), "trial 1", budget_s=0.5)
