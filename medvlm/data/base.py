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


class BatchRows(Dataset):
    """A dataset whose rows are only ever gathered a batch at a time (`__getitems__`); one row is a batch of one."""

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]):
        raise NotImplementedError


class TensorRows(Dataset):
    """Rows of in-memory tensors (inputs, labels) served a whole batch at a time."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.inputs[idx], self.labels[idx]

    def subset(self, indices: np.ndarray) -> TensorRows:
        """A copy with some rows (used by data-fraction ablations)."""
        out = self.__class__.__new__(self.__class__)
        idx = torch.as_tensor(indices)
        out.inputs, out.labels = self.inputs[idx], self.labels[idx]
        return out

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.inputs.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class ArrayImages(TensorRows):
    """Images already in memory: uint8 (N,H,W) or (N,H,W,C) plus labels, served as [B,C,H,W]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.ndim == 3:
            images = images[..., None]
        super().__init__(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2),
                         torch.from_numpy(np.asarray(labels)))

    @property
    def images(self) -> torch.Tensor:
        return self.inputs


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
