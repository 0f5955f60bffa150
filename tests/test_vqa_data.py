"""VQA sources: the image-based VQA-RAD split on the real data, the official split, the release's quirks,
SLAKE and parquet tables in their native layouts, and the batch dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvlm.data.sources import image_split
from medvlm.data.vqa import VQARows, is_yes_no, load_vqa, normalize_answer, read_vqa
from medvlm.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA
from tests.vqa_fixtures import write_slake, write_vqa_parquet, write_vqa_rad

VQA_RAD = SHARED_DATA / "vqa_rad"
needs_vqa_rad = pytest.mark.skipif(
    not (VQA_RAD / "VQA_RAD Dataset Public.json").is_file(),
    reason=f"real VQA-RAD not found at {VQA_RAD} (../shared/data beside the checkout, or set MEDVLM_SHARED_DATA)",
)


def images_by_split(rows) -> dict[str, set]:
    return {s: set(rows.loc[rows["split"] == s, "image_key"]) for s in ("train", "val", "test")}


@needs_vqa_rad
def test_real_vqa_rad_image_split_is_disjoint_deterministic_and_paper_sized():
    first = read_vqa("vqa_rad", data_root=SHARED_DATA, seed=0)
    again = read_vqa("vqa_rad", data_root=SHARED_DATA, seed=0)
    other = read_vqa("vqa_rad", data_root=SHARED_DATA, seed=1)
    sets = images_by_split(first.rows)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert {s: len(v) for s, v in sets.items()} == {"train": 201, "val": 51, "test": 62}
    assert len(first.rows) == 2248
    sizes = first.rows["split"].value_counts()
    for split, paper in (("train", 1473), ("val", 354), ("test", 421)):
        assert abs(sizes[split] - paper) < 0.1 * paper, (split, sizes[split])
    assert first.rows[["image_key", "question", "split"]].equals(again.rows[["image_key", "question", "split"]])
    assert images_by_split(other.rows)["test"] != sets["test"]


@needs_vqa_rad
def test_real_vqa_rad_official_split_and_release_quirks():
    records = read_vqa("vqa_rad", data_root=SHARED_DATA, split="official")
    rows = records.rows
    assert (rows["split"] == "test").sum() == 451
    assert rows.loc[rows["split"] == "test", "image_key"].nunique() == 203
    sets = images_by_split(rows)
    assert not (sets["train"] & sets["val"]) and len(sets["val"]) > 0
    raw = json.loads((VQA_RAD / "VQA_RAD Dataset Public.json").read_text())
    assert int(rows["closed"].sum()) == sum(r["answer_type"].strip() == "CLOSED" for r in raw) == 1299
    integers = [str(r["answer"]) for r in raw if isinstance(r["answer"], int)]
    assert len(integers) == 5 and set(integers) <= set(rows["answer"])
    assert all(isinstance(a, str) for a in rows["answer"])


@needs_vqa_rad
def test_real_vqa_rad_loads_images_at_model_size_with_max_rows():
    data = load_vqa("vqa_rad", data_root=SHARED_DATA, image_size=32, max_rows=7)
    assert {s: len(df) for s, df in data.splits.items()} == {"train": 7, "val": 7, "test": 7}
    assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (3, 32, 32)
    used = np.concatenate([df["image_index"].to_numpy() for df in data.splits.values()])
    assert sorted(set(used)) == list(range(len(data.images)))
    assert set(data.meta_columns) == {"question_type", "organ"}


def test_image_split_fractions_match_the_paper_on_314_images():
    keys = np.array([f"img{i}" for i in range(314)], dtype=object)
    sets = image_split(keys, seed=3)
    assert [len(sets[s]) for s in ("train", "val", "test")] == [201, 51, 62]
    assert set.union(*sets.values()) == set(keys)


def test_vqa_rad_fixture_quirks_and_official_split(tmp_path):
    root = write_vqa_rad(tmp_path / "vqa_rad")
    rows = read_vqa(str(root), data_root=tmp_path).rows
    left_right = rows[rows["question"] == "Is this on the left or the right?"]
    assert left_right["closed"].all()
    assert set(rows.loc[rows["question"].str.startswith("How many"), "answer"]) == {"2"}
    assert set(rows["question_type"]) == {"PRES", "SIZE", "ORGAN", "COUNT", "POS+PRES"}
    official = read_vqa("vqa_rad", data_root=tmp_path, split="official").rows
    assert set(official.loc[official["split"] == "test", "image_name"]) == {"synpic1000.jpg", "synpic1001.jpg"}
    by_image = images_by_split(read_vqa("vqa_rad", data_root=tmp_path, split="image", seed=5).rows)
    assert sum(map(len, by_image.values())) == 10 and all(by_image.values())


@pytest.mark.parametrize("val_file", ["validate.json", "validation.json"])
def test_slake_native_layout_english_only(tmp_path, val_file):
    root = write_slake(tmp_path / "slake", val_file=val_file)
    data = load_vqa("slake", data_root=tmp_path, image_size=16)
    assert {s: len(df) for s, df in data.splits.items()} == {"train": 18, "val": 6, "test": 6}
    assert not any(ch >= "\u4e00" for df in data.splits.values() for q in df["question"] for ch in q)
    assert data.split.startswith("SLAKE")
    test = data.splits["test"]
    assert list(test.loc[test["answer"] == "Yes", "closed"]) == [True, True]
    assert set(data.meta_columns) == {"content_type", "modality", "organ"}
    assert data.images.shape == (10, 3, 16, 16)
    (root / "imgs" / "xmlab0" / "source.jpg").unlink()
    with pytest.raises(DataError, match="xmlab0/source.jpg"):
        read_vqa("slake", data_root=tmp_path)


def test_parquet_table_with_image_structs_split_from_file_names(tmp_path):
    root = write_vqa_parquet(tmp_path / "pathvqa")
    data = load_vqa("pathvqa", data_root=tmp_path, image_size=16)
    assert {s: len(df) for s, df in data.splits.items()} == {"train": 18, "val": 6, "test": 6}
    train = data.splits["train"]
    assert dict(zip(train["answer"], train["closed"])) == {"yes": True, "no": True, "h&e": False}
    assert len(data.images) == 10
    with pytest.raises(ConfigError, match="split=image"):
        read_vqa(str(root / "data" / "train-00000-of-00001.parquet"), data_root=tmp_path, split="official")
    single = read_vqa(str(root / "data" / "train-00000-of-00001.parquet"), data_root=tmp_path)
    assert single.split.startswith("image-based") and len(single.rows) == 18


def test_missing_dataset_names_the_expected_place(tmp_path):
    with pytest.raises(DataError, match="osf.io"):
        read_vqa("vqa_rad", data_root=tmp_path)


def test_normalize_answer_and_yes_no():
    assert normalize_answer("  Crohn's  Disease. ") == "crohns disease"
    assert normalize_answer("X-Ray") == "x ray"
    assert normalize_answer("1.5 cm") == "1.5 cm"
    assert normalize_answer(12) == "12"
    assert is_yes_no("Yes.") and not is_yes_no("yes, left")


def test_vqa_rows_gather_shared_tables_per_batch():
    images = torch.arange(3 * 2).view(3, 2)
    ids = torch.arange(4 * 5).view(4, 5) + 100
    rows = VQARows({"images": (images, torch.tensor([2, 0, 2])), "ids": (ids, torch.tensor([3, 3, 1]))},
                   torch.tensor([[5, 1], [6, 0], [7, 1]]))
    inputs, targets = rows.__getitems__([2, 0])
    assert torch.equal(inputs["images"], images[[2, 2]]) and torch.equal(inputs["ids"], ids[[1, 3]])
    assert torch.equal(targets, torch.tensor([[7, 1], [5, 1]]))
    assert len(rows) == 3 and rows.digest() == VQARows(rows.fields, rows.targets.clone()).digest()


def test_train_fraction_subsamples_training_rows_keeping_the_open_closed_share(tmp_path):
    from medvlm.config import build_config
    from medvlm.experiments.vqa import apply_train_fraction

    write_slake(tmp_path / "slake", images_per_split={"train": 10, "val": 4, "test": 2})
    cfg = build_config({"model": "m", "dataset": "slake", "task": "vqa", "train_fraction": 0.4, "subsample_seed": 3})
    data = apply_train_fraction(load_vqa("slake", data_root=tmp_path, image_size=8), cfg)
    train = data.splits["train"]
    assert len(train) == 12 and int(train["closed"].sum()) == 4
    assert len(data.splits["val"]) == 12 and len(data.splits["test"]) == 6
    again = apply_train_fraction(load_vqa("slake", data_root=tmp_path, image_size=8), cfg)
    assert again.splits["train"].equals(train)
    both = apply_train_fraction(load_vqa("slake", data_root=tmp_path, image_size=8), cfg.model_copy(update={"subsample_val": True}))
    assert len(both.splits["val"]) == 5
