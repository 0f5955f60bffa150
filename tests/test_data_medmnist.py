"""MedMNIST loading (real BreastMNIST + fixtures in the official layout) and prompt order."""

from __future__ import annotations

import os
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from medvlm.data.base import collate_batch
from medvlm.data.medmnist import SUBSETS, load_medmnist, subset_info
from medvlm.data.prompts import check_prompt_order, class_names, class_prompts
from medvlm.data.classification import load_classification
from medvlm.errors import DataError

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to setup default root")
    import medmnist
    from medmnist.info import INFO

SHARED = Path(os.environ.get("MEDVLM_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
BREAST = SHARED / "medmnist" / "breastmnist.npz"
needs_breast = pytest.mark.skipif(not BREAST.is_file(), reason=f"real BreastMNIST not found at {BREAST} (set MEDVLM_SHARED_DATA)")

# The 2D subsets of MedMNIST v3 (medmnist/info.py), written out independently of the code under test.
EXPECTED_2D = {
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
}


def write_npz(root: Path, flag: str, size: int, n: dict[str, int], seed: int = 0, **override) -> dict[str, np.ndarray]:
    """A fixture in the official key layout: uint8 images, labels (N,1) or (N,L)."""
    info = INFO[flag]
    rng = np.random.default_rng(seed)
    shape = (size, size) if info["n_channels"] == 1 else (size, size, 3)
    n_labels = len(info["label"])
    arrays = {}
    for split, count in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        if info["task"].startswith("multi-label"):
            arrays[f"{split}_labels"] = rng.integers(0, 2, (count, n_labels), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = rng.integers(0, n_labels, (count, 1), dtype=np.uint8)
    arrays.update(override)
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    np.savez_compressed(root / name, **arrays)
    return arrays


SMALL = {"train": 12, "val": 4, "test": 5}


@needs_breast
def test_real_breastmnist_matches_official_counts_and_medmnist_reader():
    data = load_medmnist("breastmnist", 28, BREAST.parent, download=False)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 546, "val": 78, "test": 156}
    train = data.splits["train"]
    assert dict(Counter(train.labels.tolist())) == {0: 147, 1: 399}
    assert data.kind == "binary" and data.class_names[0] == "malignant" and "benign" in data.class_names[1]
    assert "malignant" in " ".join(data.prompts[0]) and "malignant" not in " ".join(data.prompts[1])
    assert data.modality == "breast ultrasound"
    assert data.extra["digest"] == "md5:750601b1f35ba3300ea97c75c52ff8f6" and data.extra["official_file"]
    # Independent reference: medmnist's own reader on the same file gives the same pixels and labels.
    official = medmnist.BreastMNIST(split="test", root=str(BREAST.parent))
    images, labels = data.splits["test"].__getitems__(list(range(len(official))))
    assert torch.equal(images[:, 0], torch.from_numpy(official.imgs))
    assert torch.equal(labels, torch.from_numpy(official.labels[:, 0].astype(np.int64)))
    batch = collate_batch(train.__getitems__([0, 5, 9]))
    assert batch[0].shape == (3, 1, 28, 28) and batch[0].dtype == torch.uint8 and batch[1].dtype == torch.int64


@needs_breast
def test_registry_dispatches_flag_to_medmnist():
    data = load_classification("BreastMNIST", data_root=BREAST.parent, size=28)
    assert data.name == "breastmnist" and len(data.splits["val"]) == 78


def test_2d_subsets_and_kinds():
    assert set(SUBSETS) == EXPECTED_2D
    assert SUBSETS["chestmnist"].kind == "multilabel"
    assert SUBSETS["retinamnist"].kind == "multiclass"  # ordinal regression, evaluated as classes
    assert SUBSETS["pneumoniamnist"].kind == "binary"
    assert SUBSETS["dermamnist"].n_channels == 3 and SUBSETS["organamnist"].n_channels == 1
    assert SUBSETS["breastmnist"].file_name(28) == "breastmnist.npz"
    assert SUBSETS["breastmnist"].file_name(224) == "breastmnist_224.npz"


def test_multiclass_fixture_uses_medmnist_file_naming(tmp_path):
    arrays = write_npz(tmp_path, "organamnist", 64, SMALL)
    data = load_medmnist("organamnist", 64, tmp_path, download=False)
    assert data.kind == "multiclass" and data.num_classes == 11
    assert data.class_names[1] == "left femur" and data.modality == "abdominal CT"
    val = data.splits["val"]
    assert val.labels.dtype == torch.int64 and val.labels.shape == (4,)
    assert np.array_equal(val.labels.numpy(), arrays["val_labels"][:, 0])
    # medmnist looks for the same file name and reads the same arrays.
    reference = medmnist.OrganAMNIST(split="val", root=str(tmp_path), size=64)
    assert np.array_equal(val.images[:, 0].numpy(), reference.imgs)


def test_rgb_fixture_serves_three_channels(tmp_path):
    write_npz(tmp_path, "dermamnist", 28, SMALL)
    images, _ = load_medmnist("dermamnist", 28, tmp_path, download=False).splits["train"].__getitems__([0, 1])
    assert images.shape == (2, 3, 28, 28)


def test_multilabel_fixture(tmp_path):
    arrays = write_npz(tmp_path, "chestmnist", 28, SMALL)
    data = load_medmnist("chestmnist", 28, tmp_path, download=False)
    assert data.kind == "multilabel" and data.num_classes == 14
    assert data.splits["test"].labels.shape == (5, 14)
    assert np.array_equal(data.splits["test"].labels.numpy(), arrays["test_labels"].astype(np.int64))
    assert data.extra["official_file"] is False


def test_label_out_of_range(tmp_path):
    labels = np.array([[0], [11], [3], [11]], dtype=np.uint8)
    write_npz(tmp_path, "organamnist", 28, SMALL, val_labels=labels)
    with pytest.raises(DataError, match=r"split 'val' of .*organamnist\.npz has 2 label\(s\) outside \[0, 11\).*\[11\]"):
        load_medmnist("organamnist", 28, tmp_path, download=False)


def test_multilabel_value_not_binary(tmp_path):
    labels = np.zeros((5, 14), dtype=np.uint8)
    labels[2, 3] = 2
    write_npz(tmp_path, "chestmnist", 28, SMALL, test_labels=labels)
    with pytest.raises(DataError, match=r"split 'test'.*outside \{0, 1\}.*\[2\]"):
        load_medmnist("chestmnist", 28, tmp_path, download=False)


def test_empty_split(tmp_path):
    write_npz(tmp_path, "organamnist", 28, {"train": 6, "val": 0, "test": 3})
    with pytest.raises(DataError, match=r"split 'val' of .*organamnist\.npz is empty"):
        load_medmnist("organamnist", 28, tmp_path, download=False)


def test_image_size_mismatch(tmp_path):
    write_npz(tmp_path, "organamnist", 28, SMALL)
    (tmp_path / "organamnist.npz").rename(tmp_path / "organamnist_64.npz")
    with pytest.raises(DataError, match=r"expected uint8 \(64, 64\)"):
        load_medmnist("organamnist", 64, tmp_path, download=False)


def test_float_images_rejected(tmp_path):
    write_npz(tmp_path, "organamnist", 28, SMALL, train_images=np.zeros((12, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match="float32 images"):
        load_medmnist("organamnist", 28, tmp_path, download=False)


def test_corrupt_npz_names_file(tmp_path):
    (tmp_path / "organamnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match=r"organamnist\.npz is corrupt or unreadable"):
        load_medmnist("organamnist", 28, tmp_path, download=False)


def test_missing_arrays_named(tmp_path):
    np.savez(tmp_path / "organamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="lacks the arrays.*train_labels"):
        load_medmnist("organamnist", 28, tmp_path, download=False)


def test_missing_file_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_medmnist("retinamnist", 128, tmp_path, download=False)
    message = str(err.value)
    assert "retinamnist_128.npz" in message and str(tmp_path) in message
    assert f"tried {tmp_path}/medmnist/retinamnist_128.npz and {tmp_path}/retinamnist_128.npz" in message
    assert INFO["retinamnist"]["url_128"] in message and "MEDVLM_DATA" in message and "\n" not in message


def test_failed_download_reports_and_leaves_no_file(tmp_path, monkeypatch):
    # A proxy on a closed local port makes every request fail at once, with or without network.
    dead = urllib.request.ProxyHandler({"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"})
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(dead))
    with pytest.raises(DataError, match=r"retinamnist\.npz not found: tried .*(no download: .* is unreachable|automatic download failed)"):
        load_medmnist("retinamnist", 28, tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


@needs_breast
@pytest.mark.parametrize("root", [SHARED, SHARED / "medmnist"], ids=["parent-of-all-datasets", "npz-folder"])
def test_data_root_is_the_parent_of_every_dataset_or_the_npz_folder(root):
    data = load_medmnist("breastmnist", 28, root, download=False)
    assert Path(data.source) == BREAST and data.extra["official_file"]


def test_downloads_go_to_the_medmnist_folder_unless_root_holds_npz_files(tmp_path):
    from medvlm.data.medmnist import download_folder

    assert download_folder(tmp_path) == tmp_path / "medmnist"
    (tmp_path / "medmnist").mkdir()
    assert download_folder(tmp_path / "medmnist") == tmp_path / "medmnist"
    (tmp_path / "chestmnist.npz").touch()
    assert download_folder(tmp_path) == tmp_path


def test_unknown_and_3d_flags():
    with pytest.raises(DataError, match=r"unknown MedMNIST subset 'fakemnist'.*breastmnist.*CSV/parquet"):
        load_medmnist("fakemnist", 28, ".")
    with pytest.raises(DataError, match="is 3D"):
        subset_info("organmnist3d")
    with pytest.raises(DataError, match="does not exist"):
        load_medmnist("breastmnist", 32, ".")


@pytest.mark.parametrize("flag", sorted(EXPECTED_2D))
def test_prompts_follow_label_indices(flag):
    names, prompts = class_names(flag), class_prompts(flag)
    labels = INFO[flag]["label"]
    assert len(names) == len(prompts) == len(labels)
    for i, (name, texts) in enumerate(zip(names, prompts)):
        assert texts and all(name.lower() in t.lower() for t in texts), (i, name, texts)
    check_prompt_order(names, prompts)


def test_breast_prompt_index_zero_is_malignant():
    prompts = class_prompts("breastmnist")
    assert all("malignant" in t for t in prompts[0])
    assert all("benign" in t and "malignant" not in t for t in prompts[1])


def test_check_prompt_order_catches_swaps():
    prompts = class_prompts("pneumoniamnist")
    with pytest.raises(ValueError, match="prompt set 0"):
        check_prompt_order(class_names("pneumoniamnist"), prompts[::-1])
    with pytest.raises(ValueError, match="2 prompt sets for 3 classes"):
        check_prompt_order(["a", "b", "c"], [["a"], ["b"]])
