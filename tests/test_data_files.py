"""Bring-your-own sources: image folders and CSV/parquet tables, with real PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medvlm.data.base import collate_batch
from medvlm.data.files import load_image_folder, load_table
from medvlm.data.sources import load_image
from medvlm.data.prompts import check_prompt_order
from medvlm.data.classification import load_classification
from medvlm.errors import DataError


def png(path: Path, mode: str = "RGB", size: tuple[int, int] = (20, 14), value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def class_folder(root: Path, per_class: int = 10) -> Path:
    """benign/ holds grayscale PNGs, malignant/ RGB ones: a mixed dataset."""
    for i in range(per_class):
        png(root / "benign" / f"b{i:02d}.png", "L", value=10 * i)
        png(root / "malignant" / f"m{i:02d}.png", "RGB", value=(200, 10 * i, 0))
    (root / "malignant" / "notes.txt").write_text("not an image")
    return root


def split_files(data) -> dict[str, list[str]]:
    return {s: [p.name for p in d.sources] for s, d in data.splits.items()}


def test_image_folder_stratified_deterministic_split(tmp_path):
    root = class_folder(tmp_path / "ds")
    data = load_image_folder(root, image_size=16, seed=3)
    assert data.class_names == ["benign", "malignant"] and data.kind == "binary"
    check_prompt_order(data.class_names, data.prompts)
    counts = {s: np.bincount(d.labels.numpy(), minlength=2).tolist() for s, d in data.splits.items()}
    assert counts == {"train": [7, 7], "val": [1, 1], "test": [2, 2]}
    files = split_files(data)
    every = [n for s in files for n in files[s]]
    assert sorted(every) == sorted([f"b{i:02d}.png" for i in range(10)] + [f"m{i:02d}.png" for i in range(10)])
    for split, d in data.splits.items():  # each file carries its own folder's label
        assert all(("b" if y == 0 else "m") == p.name[0] for p, y in zip(d.sources, d.labels.tolist()))
    assert split_files(load_image_folder(root, image_size=16, seed=3)) == files
    assert split_files(load_image_folder(root, image_size=16, seed=4)) != files
    assert data.extra["digest"].startswith("sha256:")


def test_file_items_are_three_channel_uint8(tmp_path):
    data = load_image_folder(class_folder(tmp_path / "ds"), image_size=16, seed=0)
    images, labels = collate_batch([data.splits["train"][i] for i in range(4)])
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    gray = next(i for i, y in enumerate(data.splits["train"].labels.tolist()) if y == 0)
    image, _ = data.splits["train"][gray]
    value = int(data.splits["train"].sources[gray].stem[1:]) * 10
    assert torch.all(image == value)  # a flat grayscale PNG comes back flat, copied to R, G and B


def test_resize_shorter_side_then_center_crop(tmp_path):
    # 32x16: red left quarter, green middle half, blue right quarter. Shorter side 16 -> 8 gives
    # 16x8, and the 8x8 centre crop keeps only the green middle.
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :8, 0] = 255
    arr[:, 8:24, 1] = 255
    arr[:, 24:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "bands.png")
    out = load_image(tmp_path / "bands.png", 8).float()
    assert out.shape == (3, 8, 8)
    assert out[1].mean() > 240 and out[0].mean() < 15 and out[2].mean() < 15


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    Image.fromarray(arr).save(tmp_path / "scan.png")
    out = load_image(tmp_path / "scan.png", 8)
    assert out.shape == (3, 8, 8) and int(out.min()) == 0 and int(out.max()) == 255
    assert 50 < int(out[0, 1, 5]) < 80  # 1000 / 4000 * 255 = 64, away from the edges


def test_image_folder_uses_split_subfolders(tmp_path):
    for split, n in {"train": 3, "val": 2, "test": 1}.items():
        for cls in ("a", "b", "c"):
            for i in range(n):
                png(tmp_path / split / cls / f"{split}{i}.png")
    data = load_image_folder(tmp_path, image_size=8, seed=0)
    assert data.kind == "multiclass" and data.class_names == ["a", "b", "c"]
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 9, "val": 6, "test": 3}
    assert all(p.parts[-3] == "val" for p in data.splits["val"].sources)


def test_image_folder_without_val_carves_it_from_train(tmp_path):
    for cls in ("a", "b"):
        for i in range(8):
            png(tmp_path / "train" / cls / f"{i}.png")
        png(tmp_path / "test" / cls / "t.png")
    data = load_image_folder(tmp_path, image_size=8, seed=0)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 14, "val": 2, "test": 2}
    assert not set(data.splits["val"].sources) & set(data.splits["train"].sources)


def test_image_folder_errors(tmp_path):
    png(tmp_path / "train" / "a" / "0.png")
    png(tmp_path / "train" / "b" / "0.png")
    png(tmp_path / "test" / "z" / "0.png")
    with pytest.raises(DataError, match=r"\['z'\].*not among the training classes"):
        load_image_folder(tmp_path, image_size=8, seed=0)
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nowhere", image_size=8, seed=0)
    tiny = tmp_path / "tiny"
    png(tiny / "a" / "0.png")
    png(tiny / "b" / "0.png")
    with pytest.raises(DataError, match=r"split '(val|test)' of .*tiny is empty"):
        load_image_folder(tiny, image_size=8, seed=0)


def test_corrupt_image_names_file(tmp_path):
    root = class_folder(tmp_path / "ds")
    bad = root / "benign" / "b00.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = load_image_folder(root, image_size=8, seed=0)
    split, index = next((s, i) for s, d in data.splits.items() for i, p in enumerate(d.sources) if p == bad)
    with pytest.raises(DataError, match=r"cannot read image .*b00\.png"):
        data.splits[split][index]


# -- tables -------------------------------------------------------------------------------

ROWS = [  # image, split, A, B  (CheXpert-style: 1, 0, -1 uncertain, blank)
    ("x0.png", "train", 1, 0),
    ("x1.png", "train", -1, None),
    ("x2.png", "train", None, 1),
    ("x3.png", "val", 0, -1),
    ("x4.png", "test", -1, -1),
    ("x5.png", "test", 1, 1),
]
EXPECTED = {  # labels per policy, rows in file order
    "ones": [[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [1, 1]],
    "zeros": [[1, 0], [0, 0], [0, 1], [0, 0], [0, 0], [1, 1]],
    "ignore": [[1, 0], [-1, 0], [0, 1], [0, -1], [1, 1]],  # x4 is all uncertain: dropped
}


def write_table(folder: Path, rows=ROWS, suffix: str = ".csv") -> Path:
    for name, *_ in rows:
        png(folder / "img" / name)
    frame = pd.DataFrame([(f"img/{n}", s, a, b) for n, s, a, b in rows], columns=["path", "split", "A", "B"])
    out = folder / f"labels{suffix}"
    frame.to_csv(out, index=False) if suffix == ".csv" else frame.to_parquet(out)
    return out


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_multilabel_table_policies(tmp_path, policy, suffix):
    table = write_table(tmp_path, suffix=suffix)
    data = load_table(table, "path", ["A", "B"], policy, image_size=8, seed=0)
    assert data.kind == "multilabel" and data.class_names == ["A", "B"]
    got = np.concatenate([data.splits[s].labels.numpy() for s in ("train", "val", "test")])
    assert got.tolist() == EXPECTED[policy]
    mask = np.concatenate([data.splits[s].mask.numpy() for s in ("train", "val", "test")])
    assert mask.tolist() == (np.array(EXPECTED[policy]) >= 0).tolist()
    assert data.splits["train"].sources[0] == tmp_path / "img" / "x0.png"  # relative to the table's folder
    image, label = data.splits["test"][0]
    assert image.shape == (3, 8, 8) and label.shape == (2,)


def test_ignore_policy_emptying_a_split(tmp_path):
    rows = [r for r in ROWS if r[0] != "x5.png"]  # the test split is left with x4 only (all -1)
    table = write_table(tmp_path, rows)
    assert len(load_table(table, "path", ["A", "B"], "zeros").splits["test"]) == 1
    with pytest.raises(DataError, match=r"split 'test' of .*labels\.csv is empty.*label_policy=ignore"):
        load_table(table, "path", ["A", "B"], "ignore")


def test_single_label_string_classes_and_auto_split(tmp_path):
    names = ["normal" if i % 3 else "pneumonia" for i in range(30)]
    for i in range(30):
        png(tmp_path / f"{i}.png")
    pd.DataFrame({"image": [f"{i}.png" for i in range(30)], "finding": names}).to_csv(tmp_path / "t.csv", index=False)
    data = load_table(tmp_path / "t.csv", "image", ["finding"], image_size=8, seed=1)
    assert data.kind == "binary" and data.class_names == ["normal", "pneumonia"]
    sizes = {s: np.bincount(d.labels.numpy(), minlength=2).tolist() for s, d in data.splits.items()}
    assert sizes == {"train": [14, 7], "val": [2, 1], "test": [4, 2]}
    for d in data.splits.values():
        assert all(names[int(p.stem)] == data.class_names[y] for p, y in zip(d.sources, d.labels.tolist()))


def test_table_errors(tmp_path):
    table = write_table(tmp_path)
    with pytest.raises(DataError, match=r"column\(s\) \['C'\] not in .*labels\.csv"):
        load_table(table, "path", ["A", "C"], "zeros")
    with pytest.raises(DataError, match=r"column\(s\) \['image'\]"):
        load_table(table, "image", ["A", "B"], "zeros")
    with pytest.raises(DataError, match="no label column"):
        load_table(table, "path", [], "zeros")
    (tmp_path / "img" / "x2.png").unlink()
    with pytest.raises(DataError, match=r"1 of 6 images .* missing, e\.g\. .*x2\.png"):
        load_table(table, "path", ["A", "B"], "zeros")


def test_split_column_without_test_rows(tmp_path):
    table = write_table(tmp_path, [r for r in ROWS if r[1] != "test"])
    with pytest.raises(DataError, match=r"split 'test' of .*no rows with split='test'"):
        load_table(table, "path", ["A", "B"], "zeros")


def test_bad_multilabel_value(tmp_path):
    table = write_table(tmp_path, [*ROWS[:5], ("x5.png", "test", 2, 1)])
    with pytest.raises(DataError, match=r"column 'A' .* holds \['2(\.0)?'\]"):
        load_table(table, "path", ["A", "B"], "zeros")
    table = write_table(tmp_path, [*ROWS[:5], ("x5.png", "test", 1, "yes")])
    with pytest.raises(DataError, match=r"column 'B' .* holds \['yes'\]"):
        load_table(table, "path", ["A", "B"], "zeros")


def test_registry_dispatch(tmp_path):
    table = write_table(tmp_path / "t")
    by_table = load_classification("labels.csv", data_root=tmp_path / "t", label_columns=["A", "B"], image_column="path", image_size=8)
    assert by_table.kind == "multilabel" and len(by_table.splits["train"]) == 3
    folder = class_folder(tmp_path / "f")
    assert load_classification(str(folder), data_root=tmp_path, image_size=8).class_names == ["benign", "malignant"]
    with pytest.raises(DataError, match=r"unknown dataset 'nope': use a MedMNIST name \(.*breastmnist.*\), an image folder, a CSV/parquet file or a Hugging Face dataset"):
        load_classification("nope", data_root=tmp_path)
    with pytest.raises(DataError, match="table 'gone.csv' not found"):
        load_classification("gone.csv", data_root=tmp_path)
    assert table.is_file()
