"""Engine guarantees: exact CPU repeatability, resume after a kill, and encode-once for frozen encoders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.config import build_config
from medvlm.tracking.session import tracked_run
from medvlm.zoo import create_model
from tests.conftest import BREAST_ROOT, needs_breastmnist, read_until

pytestmark = needs_breastmnist
BREAST = ["--dataset", "breastmnist", "--size", "28", "--data_root", str(BREAST_ROOT)]
N_BREAST = 546 + 78 + 156


def all_runs():
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_same_seed_rerun_gives_identical_metrics(workdir, tiny_model_dir):
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "lora", "--epochs", "2",
            "--lr", "1e-3", "--seed", "3", "--register_adapter", "false"]
    assert main(args) == 0
    assert main(args) == 0
    assert main([*args[:-2], "--seed", "4", "--register_adapter", "false"]) == 0
    runs = sorted(all_runs(), key=lambda r: r.info.start_time)
    metrics = [{k: v for k, v in r.data.metrics.items() if k.startswith(("test_", "val_", "train_loss"))} for r in runs]
    assert metrics[0] == metrics[1]
    assert metrics[0] != metrics[2]


def test_linear_probe_encodes_each_image_once_and_reuses_the_cache(workdir, tiny_model_dir, encoded_batches):
    encoded = encoded_batches
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "linear", "--epochs", "3"]
    assert main(args) == 0
    assert sum(encoded) == N_BREAST
    encoded.clear()
    assert main(args) == 0
    assert sum(encoded) == 0


def test_zeroshot_head_is_logit_scale_times_cosine(workdir, tiny_model_dir):
    """Independent recomputation: template-averaged prompts, normalised, scaled cosine, softmax."""
    import torch
    import torch.nn.functional as F

    from medvlm.data.classification import load_classification
    from medvlm.data.transforms import to_model_input
    from medvlm.tasks.classification import ImageClassifier, LinearHead, zero_shot_head

    clip = create_model(f"local-dir:{tiny_model_dir}")
    data = load_classification("breastmnist", data_root=BREAST_ROOT, size=28)
    head = LinearHead(clip.embed_dim, 2)
    head.set_zero_shot(zero_shot_head(clip, data.prompts, data.class_names, data.kind))
    images = data.splits["test"].images[:8]
    with torch.no_grad():
        logits = ImageClassifier(clip, head)(images)
        img = F.normalize(clip.encode_image(to_model_input(images, clip.preprocess)), dim=-1)
        classes = []
        for prompts in data.prompts:
            emb = F.normalize(clip.encode_text(clip.tokenize(prompts)), dim=-1).mean(0)
            classes.append(F.normalize(emb, dim=-1))
        expected = clip.logit_scale() * img @ torch.stack(classes).T
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    swapped, _ = zero_shot_head(clip, data.prompts[::-1], data.class_names[::-1], data.kind)
    torch.testing.assert_close(swapped, head.linear.weight.flip(0))


def test_resume_continues_a_killed_run_in_the_same_mlflow_run(workdir, tiny_model_dir):
    epochs = 12
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", *BREAST, "--strategy", "partial",
            "--epochs", str(epochs), "--patience", str(epochs), "--lr", "1e-3", "--seed", "1",
            "--checkpoint_every", "0"]  # a checkpoint every epoch: the kill below must find one
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "medvlm.cli", *args], env=env, cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Wait for a condition, not a duration: epoch 2's progress line, written after its checkpoint and read
    # from the pipe as it comes (the store's copy of the metrics lags by MLflow's async buffering).
    read_until(proc, f"medvlm: epoch 2/{epochs}:")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client = MlflowClient()
    (run,) = all_runs()
    assert run.info.status == "RUNNING"
    assert list((workdir / "checkpoints" / run.info.run_id).glob("last.safetensors"))
    done_before = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert done_before == list(range(1, len(done_before) + 1)) and len(done_before) < epochs

    assert main([*args, "--resume", run.info.run_id]) == 0
    (resumed,) = all_runs()
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    history = MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # each epoch exactly once, numbered from 1

    assert main([*args, "--experiment", "uninterrupted"]) == 0
    fresh = next(r for r in all_runs() if r.info.run_id != run.info.run_id)
    test_metrics = {k: v for k, v in resumed.data.metrics.items() if k.startswith("test_")}
    assert test_metrics == {k: v for k, v in fresh.data.metrics.items() if k.startswith("test_")}


def test_resume_refuses_different_parameters(workdir, tiny_model_dir, capsys):
    cfg = build_config({"model": f"local-dir:{tiny_model_dir}", "dataset": "breastmnist", "strategy": "linear",
                        "lr": 1e-3})
    with pytest.raises(RuntimeError), tracked_run(cfg) as run:
        raise RuntimeError("interrupted")
    code = main(["finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist",
                 "--strategy", "linear", "--lr", "1e-2", "--resume", run.info.run_id])
    assert code == 2
    assert "lr (0.001 vs 0.01)" in capsys.readouterr().err
