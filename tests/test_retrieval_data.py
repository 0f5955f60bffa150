"""Image-caption sources: the real ROCO test sample, ROCO's native layout, HF-style parquet, CSV tables;
missing images skipped and counted, subsets, splits, and pair indices kept from rows to batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medvlm.data.captions import load_captions
from medvlm.data.sources import decode_image, image_split
from medvlm.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA
from tests.retrieval_fixtures import (
    MISSING_PER_FOLDER,
    ROCO_ROOT,
    ROCO_SIZES,
    jpeg,
    needs_roco,
    read_roco_captions,
    write_caption_parquet,
    write_roco,
)


@needs_roco
@pytest.mark.parametrize("subset, skipped", [("radiology", 8179 - 5), ("mixed", 8179 + 612 - 5)])
def test_real_roco_sample_keeps_the_five_images_and_counts_the_rest(subset, skipped):
    data = load_captions("roco", data_root=SHARED_DATA, subset=subset, splits=("test",))
    test = data.splits["test"]
    present = sorted(p.stem for p in (ROCO_ROOT / "test" / "radiology" / "images").glob("ROCO_*.jpg"))
    assert test.image_names == present and len(present) == 5
    reference = read_roco_captions(ROCO_ROOT / "test" / "radiology" / "captions.txt")
    assert test.captions == [reference[name] for name in present]
    assert torch.equal(test.text_to_image, torch.arange(5))
    assert test.skipped == {"missing_image": skipped, "blank_caption": 0}
    assert list(data.splits) == ["test"]


@needs_roco
def test_real_roco_non_radiology_has_no_images_and_says_so():
    with pytest.raises(DataError, match=r"split 'test' .* all 612 caption rows were skipped") as err:
        load_captions("roco", data_root=SHARED_DATA, subset="non-radiology", splits=("test",))
    assert "\n" not in str(err.value)


@needs_roco
def test_real_roco_gallery_images_decode_like_every_file_source():
    test = load_captions("roco", data_root=SHARED_DATA, splits=("test",)).splits["test"]
    images, index = test.images(48).__getitems__([4, 0, 2])
    assert images.shape == (3, 3, 48, 48) and images.dtype == torch.uint8
    assert index.tolist() == [4, 0, 2]
    path = ROCO_ROOT / "test" / "radiology" / "images" / f"{test.image_names[0]}.jpg"
    assert torch.equal(images[1], decode_image(path, 48))


def test_native_layout_subsets_skip_missing_and_count_duplicates(tmp_path):
    root = write_roco(tmp_path / "roco")
    sizes = {"train": ROCO_SIZES["train"], "val": ROCO_SIZES["validation"], "test": ROCO_SIZES["test"]}
    for subset, folders in (("radiology", 1), ("non-radiology", 1), ("mixed", 2)):
        data = load_captions(str(root), data_root=tmp_path, subset=subset)
        assert data.subset == subset and data.name == "roco"
        for split, n in sizes.items():
            assert data.splits[split].n_images == len(data.splits[split].captions) == n * folders
            assert data.splits[split].skipped["missing_image"] == MISSING_PER_FOLDER * folders
    test = load_captions(str(root), data_root=tmp_path, subset="radiology").splits["test"]
    assert test.duplicate_captions == 1 and test.captions[0] == test.captions[1]
    assert test.image_names[0] != test.image_names[1]


def test_missing_validation_folder_is_carved_from_train_by_image(tmp_path):
    root = write_roco(tmp_path / "roco", validation=False)
    first = load_captions(str(root), data_root=tmp_path, seed=3)
    again = load_captions(str(root), data_root=tmp_path, seed=3)
    other = load_captions(str(root), data_root=tmp_path, seed=4)
    train, val = set(first.splits["train"].image_names), set(first.splits["val"].image_names)
    assert not train & val and len(train | val) == 2 * ROCO_SIZES["train"]
    assert len(val) == int(np.ceil(0.2 * 2 * ROCO_SIZES["train"]))
    assert set(again.splits["val"].image_names) == val != set(other.splits["val"].image_names)
    assert "validation = 20 %" in first.split


def test_pair_dataset_shows_each_captions_own_image(tmp_path):
    """Item j of `pairs` is caption j's image, so a batch's indices look up the right captions."""
    test = load_captions(str(write_caption_parquet(tmp_path / "hf")), data_root=tmp_path).splits["test"]
    assert len(test.captions) == test.n_images + 1 and test.text_to_image[-1] == 0  # one image, two captions
    pairs, gallery = test.pairs(32), test.images(32)
    idx = list(range(len(pairs)))[::-1]
    images, pair_index = pairs.__getitems__(idx)
    assert pair_index.tolist() == idx
    gallery_images, _ = gallery.__getitems__(list(range(len(gallery))))
    assert torch.equal(images, gallery_images[test.text_to_image[idx]])
    single, j = pairs[len(pairs) - 1]
    assert int(j) == len(pairs) - 1 and torch.equal(single, gallery_images[0])


def test_select_images_keeps_every_caption_of_each_chosen_image(tmp_path):
    test = load_captions(str(write_caption_parquet(tmp_path / "hf")), data_root=tmp_path).splits["test"]
    chosen = test.select_images([2, 0])
    assert chosen.image_names == [test.image_names[2], test.image_names[0]]
    assert chosen.captions == [test.captions[0], test.captions[2], test.captions[-1]]
    assert chosen.text_to_image.tolist() == [1, 0, 1]


def test_hf_parquet_reads_only_the_needed_split_files(tmp_path):
    folder = write_caption_parquet(tmp_path / "hf")
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"not parquet")
    data = load_captions(str(folder), data_root=tmp_path, splits=("test",))
    expected = pd.read_parquet(folder / "data" / "test-00000-of-00001.parquet")
    assert data.splits["test"].captions == list(expected["caption"])
    assert data.splits["test"].image_names == [f"test_{i}.jpg" for i in range(ROCO_SIZES["test"])]
    with pytest.raises(DataError, match="cannot read table"):
        load_captions(str(folder), data_root=tmp_path)


def test_csv_of_paths_split_by_image_when_it_has_no_split(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(20):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(rng))
        rows += [{"path": f"img/{i}.jpg", "text": f"caption {i} a"}, {"path": f"img/{i}.jpg", "text": f"caption {i} b"}]
    rows.append({"path": "img/missing.jpg", "text": "no such file"})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    data = load_captions("pairs.csv", data_root=tmp_path, image_column="path", caption_column="text", seed=1)
    names = {s: set(data.splits[s].image_names) for s in data.splits}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    # The split is a function of the table (missing files included), so a partial download splits the same way.
    listed = sorted({str(tmp_path / p) for p in pd.read_csv(tmp_path / "pairs.csv")["path"]})
    expected = image_split(np.array(listed, dtype=object), seed=1)
    for split in data.splits:
        assert names[split] == {p.rsplit("/", 1)[1] for p in expected[split]} - {"missing.jpg"}
    assert sum(len(n) for n in names.values()) == 20
    assert sum(d.skipped["missing_image"] for d in data.splits.values()) == 1
    for split in data.splits.values():  # both captions of an image map to that one image
        assert torch.equal(torch.bincount(split.text_to_image), torch.full((split.n_images,), 2))
        for j, text in enumerate(split.captions):
            assert text.split()[1] == split.image_names[split.text_to_image[j]].split(".")[0]


def test_table_split_column_and_subset_column(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": jpeg(rng), "caption": f"c{i}", "split": ["train", "valid", "test"][i % 3],
             "subset": ["radiology", "non-radiology"][i % 2]} for i in range(12)]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    data = load_captions(str(tmp_path / "t.parquet"), data_root=tmp_path, subset="radiology")
    assert data.splits["test"].captions == ["c2", "c8"] and data.splits["val"].captions == ["c4", "c10"]
    assert data.split == "column 'split'"


def test_errors_name_the_problem_and_the_fix(tmp_path):
    pd.DataFrame({"image": ["a.jpg"], "text": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    cases = [
        (DataError, "caption_column", lambda: load_captions(str(tmp_path / "t.csv"), data_root=tmp_path)),
        (ConfigError, "subset=mixed", lambda: load_captions(str(tmp_path / "t.csv"), data_root=tmp_path,
                                                            subset="radiology", caption_column="text")),
        (DataError, "ROCO not found: tried .*none/roco/", lambda: load_captions("roco", data_root=tmp_path / "none")),
        (DataError, "unknown retrieval dataset", lambda: load_captions("nothing-here", data_root=tmp_path)),
        (ConfigError, "subset=chest", lambda: load_captions("roco", data_root=tmp_path, subset="chest")),
    ]
    for error, words, call in cases:
        with pytest.raises(error, match=words) as err:
            call()
        assert "\n" not in str(err.value)
