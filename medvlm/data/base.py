"""Dataset containers shared by every task.

Images travel as uint8 tensors at their stored size; the model's own preprocessing
(`medvlm.data.transforms.to_model_input`) runs on whole batches, on the device, so no
per-sample Python work sits on the hot path. In-memory sources (MedMNIST) serve a batch
with one tensor index via `__getitems__`, which torch's DataLoader calls when present.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

LabelKind = Literal["binary", "multiclass", "multilabel"]


class ArrayImages(Dataset):
    """Images already in memory: uint8 (N,H,W) or (N,H,W,C) plus labels.

    Returns batches as (uint8 tensor [B,C,H,W], labels tensor) through `__getitems__`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.ndim == 3:
            images = images[..., None]
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx]

    def subset(self, indices: np.ndarray) -> ArrayImages:
        """A view on some rows (used by data-fraction ablations)."""
        out = ArrayImages.__new__(ArrayImages)
        idx = torch.as_tensor(indices)
        out.images, out.labels = self.images[idx], self.labels[idx]
        return out

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def collate_batch(batch):
    """Collate for DataLoader: a batch fetched by `__getitems__` is already stacked."""
    if isinstance(batch, tuple):
        return batch
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)


@dataclass
class ClassificationData:
    """One classification dataset: splits plus the class names and prompts tied to label indices."""

    name: str
    kind: LabelKind
    class_names: list[str]
    prompts: list[list[str]]
    splits: dict[str, Dataset]
    modality: str = "unknown"
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.class_names):
            raise ValueError(f"{self.name}: {len(self.prompts)} prompt sets for {len(self.class_names)} classes")
