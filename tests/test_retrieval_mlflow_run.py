"""Acceptance: `mlflow run . -e zeroshot -P task=retrieval` on the real ROCO sample (a native-layout fixture
without it) and `-e finetune -P task=retrieval -P strategy=lora` on a native-layout fixture, with the
tracking the README's "What a run records" describes; the registered adapter loads and its embeddings reproduce the run's test recall."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from medvlm.data.captions import load_captions
from medvlm.metrics.retrieval import retrieval_metrics
from medvlm.tasks.retrieval import DualEncoder, embed_gallery
from medvlm import names
from medvlm.zoo import create_model
from tests.conftest import REPO, SHARED_DATA
from tests.retrieval_fixtures import ROCO_ROOT, write_roco

EPOCHS = 2
SPEC_TAGS = {"medvlm.model", "medvlm.domain", "medvlm.dataset", "medvlm.task", "medvlm.strategy", "medvlm.seed"}
RECALL = {f"test_{d}_R{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
ADAPTER = "medvlm-tiny-clip-roco-retrieval"


@pytest.fixture(scope="module")
def project_runs(tmp_path_factory, new_mlflow_store, tiny_model_dir):
    root = tmp_path_factory.mktemp("retrieval-project")
    fixture = write_roco(root / "data" / "roco")
    uri = new_mlflow_store(root / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MEDVLM_CACHE": str(root / "cache"),
           "MEDVLM_CHECKPOINTS": str(root / "ckpt"), "MLFLOW_EXPERIMENT_NAME": "retrieval"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    zeroshot_root = SHARED_DATA if (ROCO_ROOT / "test" / "radiology" / "captions.txt").is_file() else fixture.parent
    model = ["-P", f"model=local-dir:{tiny_model_dir}", "-P", "task=retrieval", "-P", "dataset=roco"]
    commands = {
        "zeroshot": ["-e", "zeroshot", *model, "-P", f"data_root={zeroshot_root}"],
        "lora": ["-e", "finetune", *model, "-P", f"data_root={fixture.parent}", "-P", "strategy=lora",
                 "-P", f"epochs={EPOCHS}", "-P", "patience=5", "-P", "batch_size=8", "-P", "lr=1e-3"],
    }
    for name, args in commands.items():
        proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                               "--experiment-name", "retrieval", *args],
                              env=env, cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("retrieval").experiment_id])
    return client, {r.data.tags["medvlm.strategy"]: r for r in runs}, fixture, zeroshot_root


def test_each_run_finishes_with_the_spec_tracking(project_runs):
    client, runs, _, zeroshot_root = project_runs
    assert sorted(runs) == ["lora", "zeroshot"]
    for strategy, run in runs.items():
        tags, metrics, run_id = run.data.tags, run.data.metrics, run.info.run_id
        assert run.info.status == "FINISHED" and SPEC_TAGS <= set(tags)
        assert tags["medvlm.task"] == "retrieval" and tags["mlflow.runName"].endswith(f"roco · {strategy}")
        assert RECALL | {"test_mean_recall", "trainable_params", "test_captions_truncated",
                         "test_duplicate_captions", names.key("test", "images")} <= set(metrics)
        assert {"config.json", "worst_queries.json", "recall_at_k.json", "plots"} <= {
            a.path for a in client.list_artifacts(run_id)}
        assert "plots/recall_at_k.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
        assert "roco/test" in {d.dataset.name for d in run.inputs.dataset_inputs}
    zeroshot = runs["zeroshot"].data.metrics
    assert zeroshot["trainable_params"] == 0
    assert zeroshot[names.key("test", "images")] == (5 if zeroshot_root == SHARED_DATA else 12)
    lora = runs["lora"].data.metrics
    assert lora["trainable_params"] > 0 and lora["train_images_per_s"] > 0 and lora["test_duplicate_captions"] == 1
    for key in ("train_loss", "val_loss", "val_text_to_image_R5"):
        assert sorted(m.step for m in client.get_metric_history(runs["lora"].info.run_id, key)) == list(range(1, EPOCHS + 1))
    assert "plots/learning_curves.png" in {a.path for a in client.list_artifacts(runs["lora"].info.run_id, "plots")}


def test_registered_adapter_embeds_and_reproduces_the_test_recall(project_runs, tiny_model_dir):
    client, runs, fixture, _ = project_runs
    version = client.get_model_version_by_alias(ADAPTER, "best")
    assert version.tags["run_id"] == runs["lora"].info.run_id
    model = mlflow.pyfunc.load_model(f"models:/{ADAPTER}@best")

    test = load_captions("roco", data_root=fixture.parent, splits=("test",)).splits["test"]
    assert test.n_images == len(test.captions)  # one caption per image: one DataFrame
    out = model.predict(pd.DataFrame({"image": test.image_sources, "text": test.captions}))
    image_emb = torch.tensor(np.stack(out["image_embedding"]), dtype=torch.float32)
    text_emb = torch.tensor(np.stack(out["text_embedding"]), dtype=torch.float32)
    np.testing.assert_allclose(image_emb.norm(dim=1), 1.0, atol=1e-5)
    recall = retrieval_metrics(image_emb, text_emb, test.text_to_image).metrics
    logged = runs["lora"].data.metrics
    for key, value in recall.items():
        assert logged[f"test_{key.replace('@', '')}"] == pytest.approx(value), key

    clip = create_model(f"local-dir:{tiny_model_dir}").eval()
    base, _ = embed_gallery(DualEncoder(clip), test, clip.tokenize(test.captions), 64, torch.device("cpu"))
    assert not torch.allclose(base, image_emb, atol=1e-4)  # the adapter is applied

    texts_only = model.predict(pd.DataFrame({"text": [None, test.captions[2]]}))
    assert list(texts_only.columns) == ["text_embedding"] and texts_only["text_embedding"][0] is None
    np.testing.assert_allclose(texts_only["text_embedding"][1], out["text_embedding"][2], atol=1e-6)
