"""train_fraction subsamples: exact sizes, label shares kept, fixed seed, test split untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvlm.config import build_config
from medvlm.data.base import ArrayImages, TensorRows
from medvlm.data.medmnist import load_medmnist
from medvlm.data.subsample import stratified_indices, strata_of, subsample, subsample_splits
from tests.conftest import BREAST_ROOT, needs_breastmnist


def counts(labels: np.ndarray) -> dict[int, int]:
    values, n = np.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), n.tolist()))


@needs_breastmnist
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_breastmnist_subsample_has_the_size_and_label_shares_asked_for(fraction):
    train = load_medmnist("breastmnist", 28, BREAST_ROOT).splits["train"]
    labels = train.labels.numpy().reshape(-1)
    assert counts(labels) == {0: 147, 1: 399}  # the official BreastMNIST train split
    part = subsample(train, fraction, seed=0)
    assert len(part) == int(np.floor(fraction * 546 + 0.5))
    for label, n in counts(part.labels.numpy().reshape(-1)).items():
        assert abs(n - fraction * counts(labels)[label]) < 1.0  # each class keeps its share, to the row
    # the rows are real rows of the split, in dataset order, each once
    chosen = stratified_indices(strata_of(labels), fraction, seed=0)
    assert np.all(np.diff(chosen) > 0)
    assert torch.equal(part.images, train.images[torch.as_tensor(chosen)])


@needs_breastmnist
def test_seed_fixes_the_subset_and_fraction_one_is_the_split():
    train = load_medmnist("breastmnist", 28, BREAST_ROOT).splits["train"]
    labels = strata_of(train.labels.numpy())
    assert np.array_equal(stratified_indices(labels, 0.1, 3), stratified_indices(labels, 0.1, 3))
    assert not np.array_equal(stratified_indices(labels, 0.1, 3), stratified_indices(labels, 0.1, 4))
    assert subsample(train, 1.0, seed=0) is train


def test_rare_class_is_kept_and_rounding_is_by_largest_remainder():
    labels = np.array([0] * 97 + [1] * 3)
    idx = stratified_indices(labels, 0.1, seed=0)
    assert counts(labels[idx]) == {0: 10, 1: 1}  # 9.7 -> 10 by remainder; 0.3 -> kept at 1 so no class vanishes
    assert len(stratified_indices(np.array([0] * 50 + [1] * 50), 0.33, seed=0)) == 33


def test_multilabel_rows_are_stratified_by_label_combination():
    rng = np.random.default_rng(0)
    combos = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    rows = combos[rng.choice(3, size=400, p=[0.6, 0.3, 0.1])]
    ds = TensorRows(torch.zeros(400, 1), torch.from_numpy(rows))
    part = subsample(ds, 0.25, seed=1)
    assert len(part) == 100
    before, after = strata_of(rows), strata_of(part.labels.numpy())
    for combo in range(3):
        assert abs((after == combo).sum() - 0.25 * (before == combo).sum()) < 1.0


def test_subsample_splits_touches_train_and_val_only_as_configured():
    images = np.zeros((200, 4, 4), dtype=np.uint8)
    labels = np.repeat([0, 1], 100)
    splits = {s: ArrayImages(images, labels) for s in ("train", "val", "test")}
    cfg = build_config({"model": "m", "dataset": "d", "train_fraction": "0.1"})
    out = subsample_splits(splits, cfg)
    assert [len(out[s]) for s in ("train", "val", "test")] == [20, 200, 200]
    out = subsample_splits(splits, cfg.model_copy(update={"subsample_val": True}))
    assert [len(out[s]) for s in ("train", "val", "test")] == [20, 20, 200]
