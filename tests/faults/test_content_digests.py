"""Content-addressed caches and lineage: an image edited in place gets a new digest and new features."""

from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from medvlm.cli import main
from medvlm.data.content import file_digests


def write_folder(root, seed: int) -> None:
    """An image folder, 2 classes x 10 PNGs, same names whatever the seed, pixels from the seed."""
    rng = np.random.default_rng(seed)
    for label in ("benign", "malignant"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / label / f"{i}.png")


def lineage_digests(run_id: str) -> set[str]:
    return {d.dataset.digest for d in MlflowClient().get_run(run_id).inputs.dataset_inputs}


def test_edited_images_give_new_features_and_a_new_digest(workdir, tiny_model_dir, encoded_batches):
    encoded = encoded_batches
    folder = workdir / "scans"
    write_folder(folder, seed=0)
    args = ["finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", str(folder), "--strategy", "linear",
            "--epochs", "1"]
    client = MlflowClient()

    def run() -> tuple[str, int]:
        encoded.clear()
        assert main(args) == 0
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"])
        return runs[0].info.run_id, sum(encoded)

    first, n_first = run()
    assert n_first == 20
    again, n_again = run()
    assert n_again == 0 and lineage_digests(again) == lineage_digests(first)  # unchanged files: cache hit
    write_folder(folder, seed=1)  # same names, same sizes, new pixels
    edited, n_edited = run()
    assert n_edited == 20  # stale features are never served
    assert lineage_digests(edited).isdisjoint(lineage_digests(first))


def test_file_digests_hash_content_and_remember_unchanged_files(workdir, monkeypatch):
    a, b = workdir / "a.bin", workdir / "b.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    import hashlib

    expected = hashlib.sha256(b"same").hexdigest()
    assert file_digests([a, b]) == [expected, expected]
    reads: list[str] = []
    import medvlm.data.content as content

    real = content._sha256
    monkeypatch.setattr(content, "_sha256", lambda p: reads.append(p.name) or real(p))
    assert file_digests([a, b]) == [expected, expected] and reads == []  # from the index, no bytes read
    b.write_bytes(b"edit")
    assert file_digests([a, b]) == [expected, hashlib.sha256(b"edit").hexdigest()] and reads == ["b.bin"]
