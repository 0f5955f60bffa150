"""`medvlm zeroshot/finetune --task retrieval` end to end with a tiny local model: the real ROCO test
sample zero-shot (its recall recomputed by hand), partial and full fine-tuning on a native-layout
fixture, and the one-line errors."""

from __future__ import annotations

import mlflow
import open_clip
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.data.transforms import to_model_input
from medvlm.data.sources import decode_image
from medvlm.metrics.retrieval import retrieval_metrics
from medvlm import names
from medvlm.zoo import create_model
from tests.conftest import SHARED_DATA
from tests.retrieval_fixtures import ROCO_ROOT, needs_roco, read_roco_captions, write_roco

RECALL_KEYS = {f"test_{d}_R{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}


@pytest.fixture(scope="module")
def store_root(tmp_path_factory, new_mlflow_store):
    """One MLflow store for the module; each test logs to its own experiment."""
    root = tmp_path_factory.mktemp("retrieval-e2e")
    new_mlflow_store(root / "mlflow.db")
    return root


@pytest.fixture
def store(store_root, monkeypatch):
    monkeypatch.chdir(store_root)
    uri = f"sqlite:///{store_root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MEDVLM_CACHE", str(store_root / "cache"))
    monkeypatch.setenv("MEDVLM_CHECKPOINTS", str(store_root / "checkpoints"))
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID, which would send the next test's run to this experiment.
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    mlflow.set_tracking_uri(uri)
    return store_root


def _runs(experiment: str) -> list:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["start_time ASC"])


@needs_roco
def test_zeroshot_on_the_real_roco_sample(store, tiny_model_dir):
    model = f"local-dir:{tiny_model_dir}"
    assert main(["zeroshot", "--task", "retrieval", "--model", model, "--dataset", "roco", "--experiment", "zeroshot",
                 "--data_root", str(SHARED_DATA), "--subset", "radiology"]) == 0
    (run,) = _runs("zeroshot")
    client, metrics, run_id = MlflowClient(), run.data.metrics, run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["medvlm.task"] == "retrieval"
    assert RECALL_KEYS | {"test_mean_recall", "test_image_to_text_median_rank"} <= set(metrics)
    assert metrics["test_images"] == metrics["test_captions"] == 5
    assert metrics["test_skipped_missing_image"] == 8179 - 5 and metrics["trainable_params"] == 0
    assert metrics["test_duplicate_captions"] == 0
    assert "holds only 5 captions (the image-to-text gallery) and 5 images" in run.data.tags["medvlm.warning.small_gallery"]

    # Recomputed by hand: each image decoded and embedded on its own, captions from an independent parse.
    stems = sorted(p.stem for p in (ROCO_ROOT / "test" / "radiology" / "images").glob("*.jpg"))
    captions = [read_roco_captions(ROCO_ROOT / "test" / "radiology" / "captions.txt")[n] for n in stems]
    clip = create_model(model).eval()
    bpe = open_clip.tokenizer.SimpleTokenizer()  # the tiny model uses open_clip's default BPE: start + tokens + end
    assert metrics["test_captions_truncated"] == sum(len(bpe.encode(c)) + 2 > 32 for c in captions) == 1
    with torch.no_grad():
        images = torch.stack([decode_image(ROCO_ROOT / "test" / "radiology" / "images" / f"{n}.jpg", 32) for n in stems])
        image_emb = torch.cat([F.normalize(clip.encode_image(to_model_input(x[None], clip.preprocess)), dim=-1)
                               for x in images])
        text_emb = F.normalize(clip.encode_text(clip.tokenize(captions)), dim=-1)
    expected = retrieval_metrics(image_emb, text_emb, torch.arange(5)).metrics
    for key, value in expected.items():
        assert metrics[f"test_{key.replace('@', '')}"] == pytest.approx(value)

    table = client.load_table(run.info.experiment_id, "worst_queries.json", run_ids=[run_id])
    assert len(table) == 10 and set(table["direction"]) == {"image_to_text", "text_to_image"}
    i2t = table[table["direction"] == "image_to_text"]
    assert list(i2t["rank"]) == sorted(i2t["rank"], reverse=True)
    assert all(captions[stems.index(n)] == c for n, c in zip(i2t["query"], i2t["best_positive"]))
    assert {"plots/recall_at_k.png"} <= {a.path for a in client.list_artifacts(run_id, "plots")}
    curve = client.load_table(run.info.experiment_id, "recall_at_k.json", run_ids=[run_id])
    assert curve[curve["k"] == 5]["recall"].tolist() == [1.0, 1.0]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"roco/test"}


@pytest.fixture
def roco_fixture(tmp_path):
    return write_roco(tmp_path / "roco")


@pytest.mark.parametrize("strategy, epochs", [("partial", 2), ("full", 1)])
def test_finetune_partial_and_full(store, tiny_model_dir, roco_fixture, strategy, epochs):
    assert main(["finetune", "--task", "retrieval", "--strategy", strategy, "--model", f"local-dir:{tiny_model_dir}",
                 "--dataset", str(roco_fixture), "--epochs", str(epochs), "--batch_size", "8", "--lr", "1e-3",
                 "--experiment", strategy]) == 0
    (run,) = _runs(strategy)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and RECALL_KEYS <= set(metrics)
    net = create_model(f"local-dir:{tiny_model_dir}").net
    expected = (net.visual.proj.numel() + net.text_projection.numel() + 1 if strategy == "partial"
                else sum(p.numel() for p in net.parameters()))
    assert metrics["trainable_params"] == expected
    assert metrics["train_images"] == 20 and metrics["val_images"] == 8 and metrics["test_images"] == 12
    assert metrics["test_duplicate_captions"] == 1
    for key in ("train_loss", "val_loss", "val_image_to_text_R1", "val_mean_recall"):
        assert len(MlflowClient().get_metric_history(run.info.run_id, key)) == metrics[names.TRAIN_EPOCHS_RUN], key
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"roco/train", "roco/val", "roco/test"}
    assert "medvlm.registered_model" not in run.data.tags  # only LoRA adapters are registered


@pytest.mark.parametrize("args, words, status", [
    (["finetune", "--strategy", "linear"], "task=retrieval takes strategy", None),  # refused before any run exists
    (["zeroshot", "--subset", "radiology"], "split 'test' of", "FAILED"),
])
def test_user_errors_are_one_line(store, tiny_model_dir, tmp_path, capsys, args, words, status):
    root = write_roco(tmp_path / "roco", sizes={"test": 0})
    experiment = f"error-{args[0]}"
    code = main([*args, "--task", "retrieval", "--model", f"local-dir:{tiny_model_dir}", "--dataset", str(root),
                 "--experiment", experiment])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medvlm: error:")]
    assert code == 2 and len(errors) == 1 and words in errors[0]
    if status is None:
        assert MlflowClient().get_experiment_by_name(experiment) is None
    else:
        assert _runs(experiment)[0].info.status == status
