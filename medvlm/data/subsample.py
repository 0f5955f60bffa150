"""Label-stratified, seeded subsamples of a split, for data-fraction ablations.

Strata are the labels: the class for binary/multi-class data, the whole label row (the
combination of positive labels) for multi-label data, so co-occurrence patterns keep their
share too. Each stratum gets `fraction * count` rows, rounded by largest remainder so the
subset has exactly round(fraction * n) rows; single-label strata keep at least one row, so a
small fraction never drops a class (the subset is then a row or two larger). Rows are taken
from a fixed per-stratum shuffle of `seed`, independent of the fraction, and returned in
dataset order. Datasets without labels (retrieval pairs) get a plain seeded sample.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from medvlm.config import RunConfig


def strata_of(labels: np.ndarray) -> np.ndarray:
    """One stratum id per row: the label itself, or the label combination of a multi-label row."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    _, ids = np.unique(labels.reshape(len(labels), -1), axis=0, return_inverse=True)
    return ids.reshape(-1)


def stratified_indices(strata: np.ndarray, fraction: float, seed: int, keep_every_stratum: bool = True) -> np.ndarray:
    """Sorted row indices of a `fraction` subsample that keeps each stratum's share."""
    strata = np.asarray(strata)
    n = len(strata)
    if fraction >= 1.0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    values, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    shuffled = [rng.permutation(np.flatnonzero(inverse == s)) for s in range(len(values))]
    quota = fraction * counts
    take = np.floor(quota).astype(int)
    short = int(np.floor(fraction * n + 0.5)) - int(take.sum())
    by_remainder = np.lexsort((rng.random(len(values)), -(quota - take)))
    take[by_remainder[:short]] += 1
    if keep_every_stratum:
        take = np.maximum(take, 1)
    return np.sort(np.concatenate([rows[:k] for rows, k in zip(shuffled, take)]))


def labels_of(dataset: Dataset) -> np.ndarray | None:
    labels = getattr(dataset, "labels", None)
    return labels.numpy() if isinstance(labels, torch.Tensor) else labels


def subsample(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A `fraction` of `dataset`, stratified by its labels when it has any."""
    if fraction >= 1.0:
        return dataset
    labels = labels_of(dataset)
    if labels is None:
        indices = stratified_indices(np.zeros(len(dataset), dtype=int), fraction, seed)
    else:
        indices = stratified_indices(strata_of(labels), fraction, seed, keep_every_stratum=np.ndim(labels) == 1)
    return dataset.subset(indices) if hasattr(dataset, "subset") else Subset(dataset, indices.tolist())


def subsample_splits(splits: Mapping[str, Dataset], cfg: RunConfig) -> dict[str, Dataset]:
    """Apply `cfg.train_fraction` to the train split (and val when `cfg.subsample_val`); test stays whole."""
    chosen = {"train", "val"} if cfg.subsample_val else {"train"}
    return {name: subsample(ds, cfg.train_fraction, cfg.subsample_seed) if name in chosen else ds
            for name, ds in splits.items()}
