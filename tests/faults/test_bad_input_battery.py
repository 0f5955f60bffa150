"""Bad input through the CLI: exit 2, one line on stderr, no traceback, and nothing already logged changes.

A reference LoRA run (with its registered adapter) is logged first; after every bad input its run,
artifacts, registered version and `best` alias must be byte-for-byte what they were.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medvlm.cli import main
from medvlm.testing import save_tiny_open_clip
from tests.conftest import BREAST_ROOT, needs_breastmnist
from tests.vqa_fixtures import write_vqa_rad

pytestmark = needs_breastmnist
NAME = "medvlm-tiny-clip-breastmnist-classification"


def snapshot(client: MlflowClient) -> dict:
    """Every byte a user could read back: runs (params, metrics, tags, status), artifact files, registry."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    out: dict = {}
    for run in runs:
        root = Path(run.info.artifact_uri.removeprefix("file://"))
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        out[run.info.run_id] = (run.info.status, run.info.end_time, run.data.to_dictionary(), files)
    versions = client.search_model_versions(f"name='{NAME}'")
    out["registry"] = sorted((v.version, v.source, v.run_id, tuple(sorted(v.tags.items()))) for v in versions)
    out["alias"] = client.get_model_version_by_alias(NAME, "best").version
    return out


def image_folder(root: Path, bad_name: str, bad: Image.Image) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / label / f"{i}.png")
    bad.save(root / "a" / bad_name) if bad is not None else (root / "a" / bad_name).write_bytes(b"not an image")
    return root


def vqa_rad_with(root: Path, edit) -> Path:
    """A data_root whose vqa_rad/ holds a VQA-RAD release with record 5 edited."""
    write_vqa_rad(root / "vqa_rad", n_images=4)
    path = root / "vqa_rad" / "VQA_RAD Dataset Public.json"
    records = json.loads(path.read_text())
    edit(records[5])
    path.write_text(json.dumps(records))
    return root


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is off in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_bad_inputs_fail_in_one_line_and_change_nothing_logged(workdir, tiny_model_dir, capsys, no_network):
    model = f"local-dir:{tiny_model_dir}"
    breast = ["--dataset", "breastmnist", "--size", "28", "--data_root", str(BREAST_ROOT)]
    assert main(["finetune", "--model", model, *breast, "--strategy", "lora", "--epochs", "1"]) == 0
    client = MlflowClient()
    before = snapshot(client)
    capsys.readouterr()

    nan_tiff = Image.fromarray(np.where(np.eye(28) > 0, np.nan, 0.5).astype(np.float32), mode="F")
    corrupt = save_tiny_open_clip(workdir / "corrupt-clip")
    weights = corrupt / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    finetune = ["finetune", "--model", model, "--epochs", "1"]
    vqa = ["zeroshot", "--model", model, "--task", "vqa", "--dataset", "vqa_rad"]
    cases = {
        "float TIFF with NaN": ([*finetune, "--strategy", "linear", "--dataset",
                                 str(image_folder(workdir / "tiff", "nan.tif", nan_tiff))], "non-finite pixel"),
        "VQA record without answer": ([*vqa, "--data_root", str(vqa_rad_with(workdir / "v1", lambda r: r.pop("answer")))],
                                      "record 5 has no 'answer'"),
        "VQA record with null answer": ([*vqa, "--data_root", str(vqa_rad_with(workdir / "v2", lambda r: r.update(answer=None)))],
                                        "record 5 has no 'answer'"),
        "VQA record without question": ([*vqa, "--data_root", str(vqa_rad_with(workdir / "v3", lambda r: r.pop("question")))],
                                        "record 5 has no 'question'"),
        "VQA record without image_name": ([*vqa, "--data_root", str(vqa_rad_with(workdir / "v4", lambda r: r.pop("image_name")))],
                                          "record 5 has no 'image_name'"),
        "corrupt safetensors": (["zeroshot", "--model", f"local-dir:{corrupt}", *breast], "corrupt or truncated"),
        "bad image under num_workers 2": ([*finetune, "--strategy", "partial", "--num_workers", "2", "--dataset",
                                           str(image_folder(workdir / "broken", "zz.png", None))], "zz.png"),
        "read-only data_root, file missing": (["zeroshot", "--model", model, "--dataset", "breastmnist", "--size", "28",
                                               "--data_root", "/proc/medvlm-readonly"], "not found"),
        "failed download": (["zeroshot", "--model", model, "--dataset", "breastmnist", "--size", "28",
                             "--data_root", str(workdir / "new" / "deeper")], "not found"),
    }
    for case, (args, needle) in cases.items():
        code = main(args)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("medvlm: error:")]
        assert code == 2, f"{case}: exit {code}\n{err[-2000:]}"
        assert len(errors) == 1 and needle in errors[0], f"{case}: {errors or err[-2000:]}"
        assert "Traceback" not in err, f"{case}: {err[-2000:]}"
    assert not (workdir / "new").exists()  # nothing created outside the folders the user named
    after = snapshot(client)
    assert {k: after[k] for k in before} == before
    failed = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
              if r.info.run_id not in before]
    assert failed and all(r.info.status == "FAILED" and r.data.tags.get("medvlm.error") for r in failed)


def test_nan_in_the_weights_is_called_corrupt_weights_not_a_learning_rate_problem(workdir, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    folder = save_tiny_open_clip(workdir / "nan-clip")
    state = load_file(str(folder / "open_clip_model.safetensors"))
    key = next(k for k in state if k.startswith("visual.") and state[k].is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    code = main(["finetune", "--model", f"local-dir:{folder}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT), "--strategy", "partial", "--epochs", "1"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medvlm: error:")]
    assert code == 2 and len(errors) == 1
    assert "weights contain NaN or inf before training" in errors[0] and "lower lr" not in errors[0]
