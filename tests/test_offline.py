"""A helpful offline first run: with no network and no mirror, a hub model or a MedMNIST file fails at once,
in one line (exit 2) that says where it looked and how to get going.

"At once" is asserted as a condition, not a duration (a busy machine stretches any duration): no retry
lines around the error, and every request goes to a closed local port that refuses it immediately.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from tests.conftest import SHARED_DATA, needs_breastmnist

DEAD = "http://127.0.0.1:9"  # a closed local port: every request is refused at once, with or without a network


def finetune(workdir, model: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HF_", "MEDVLM_WEIGHTS"))}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "HF_HOME": str(workdir / "hf"),
                "HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, "HTTP_PROXY": DEAD, "NO_PROXY": ""})
    return subprocess.run([sys.executable, "-m", "medvlm.cli", "finetune", "--model", model, "--dataset", "breastmnist",
                           "--size", "28", "--data_root", str(SHARED_DATA), "--strategy", "lora", "--epochs", "1"],
                          env=env, cwd=workdir, capture_output=True, text=True, timeout=600)


@needs_breastmnist
def test_a_hub_model_fails_at_once_in_one_line_when_the_hub_is_unreachable(workdir):
    proc = finetune(workdir, "biomedclip")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    (line,) = [x for x in lines if x.startswith("medvlm:")]  # one line, and no retry storm or traceback around it
    assert not [x for x in lines if any(word in x for word in ("Retry", "huggingface", "Traceback"))], lines
    assert line.startswith("medvlm: error: model 'biomedclip' cannot be loaded offline: http://127.0.0.1:9 is unreachable")
    assert "$MEDVLM_WEIGHTS/biomedclip/ (an open_clip local-dir folder" in line and f"nor the cache {workdir / 'hf' / 'hub'}" in line
    assert "save_tiny_open_clip('tiny-clip')" in line and "model=local-dir:$PWD/tiny-clip" in line
    assert "HF_HUB_OFFLINE=1" in line and line.endswith("network check")  # whole, never cut mid-word
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
              if r.data.params["model"] == "biomedclip"]
    assert run.info.status == "FAILED" and "cannot be loaded offline" in run.data.tags["medvlm.error"]


def test_a_medmnist_download_fails_at_once_listing_every_path_tried(workdir, capsys, offline, tiny_model_dir):
    empty = workdir / "data"
    code = main(["zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "pneumoniamnist", "--size", "28",
                 "--data_root", str(empty)])
    assert code == 2
    err = capsys.readouterr().err  # MLflow logs its store's creation there too
    (line,) = [line for line in err.splitlines() if line.startswith("medvlm: error:")]
    assert "Traceback" not in err
    assert (f"pneumoniamnist.npz not found: tried {empty}/medmnist/pneumoniamnist.npz and {empty}/pneumoniamnist.npz "
            f"(no download: https://zenodo.org is unreachable") in line
    assert f"into {empty}/medmnist, or set data_root / MEDVLM_DATA" in line and not empty.exists()


def test_offline_a_model_in_the_hugging_face_cache_is_found_and_a_missing_one_is_named(tmp_path, offline, monkeypatch):
    from huggingface_hub import constants

    from medvlm.errors import ModelError
    from medvlm.zoo.factory import locate_weights

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("MEDVLM_WEIGHTS", raising=False)
    repo = tmp_path / "hub" / "models--microsoft--BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    weights = repo / "snapshots" / "abc" / "open_clip_pytorch_model.bin"  # the cache layout huggingface_hub leaves
    weights.parent.mkdir(parents=True)
    weights.touch()
    assert locate_weights("biomedclip") == str(weights)
    with pytest.raises(ModelError) as err:
        locate_weights("quiltnet")
    assert "model 'quiltnet' cannot be loaded offline: HF_HUB_OFFLINE is set" in str(err.value)
    assert f"nor the cache {tmp_path / 'hub'}" in str(err.value) and "$MEDVLM_WEIGHTS/quiltnet/" in str(err.value)


def test_long_causes_are_clipped_at_a_word_boundary_never_mid_word():
    from medvlm.network import clipped

    text = "Failed to download file (open_clip_config.json) for microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224\nmore"
    assert clipped(text, 200) == text.splitlines()[0]
    short = clipped(text, 60)
    assert short == "Failed to download file (open_clip_config.json) for …" and len(short) <= 62
    assert clipped("", 10) == "" and clipped("  \n  ", 10) == ""
