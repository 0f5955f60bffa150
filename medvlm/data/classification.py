"""Classification datasets: one entry point from a `dataset` string to a ClassificationData.

`dataset` is a MedMNIST subset name, an image folder, a CSV/parquet file or a Hugging Face dataset
(`hf:ORG/NAME`, `hf:FOLDER`); relative paths are looked up in the working directory first, then
under `data_root`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medvlm.data.base import ClassificationData
from medvlm.data.files import LabelPolicy, load_hub_table, load_image_folder, load_table
from medvlm.hf_name import is_hf
from medvlm.data.medmnist import INFO, SUBSETS, load_medmnist, locate_medmnist
from medvlm.data.sources import TABLE_SUFFIXES, locate
from medvlm.errors import DataError


def load_classification(
    dataset: str,
    *,
    data_root: str | Path,
    size: int = 224,
    image_size: int = 224,
    seed: int = 0,
    image_column: str = "image",
    label_columns: Sequence[str] = (),
    label_policy: LabelPolicy = "zeros",
) -> ClassificationData:
    """Dispatch on `dataset`. `size` applies to MedMNIST files, `image_size` to file sources."""
    name = dataset.strip()
    if name.lower() in INFO:
        return load_medmnist(name.lower(), size, data_root)
    if is_hf(name):
        return load_hub_table(name, data_root, image_column, label_columns, label_policy, image_size, seed)
    path = _source(name, data_root)
    if path.is_dir():
        return load_image_folder(path, image_size, seed)
    return load_table(path, image_column, label_columns, label_policy, image_size, seed)


def locate_classification(dataset: str, *, data_root: str | Path, size: int = 224) -> str:
    """Where `dataset` will be read from, without reading it (study preflight); DataError when nowhere."""
    name = dataset.strip()
    if name.lower() in INFO:
        return locate_medmnist(name.lower(), size, data_root)
    return str(_source(name, data_root))


def _source(name: str, data_root: str | Path) -> Path:
    """The image folder or table `name` names (`locate`), or a DataError saying what `dataset` may be."""
    path = locate(name, data_root)
    if path is not None and path.is_dir():
        return path
    if Path(name).suffix.lower() in TABLE_SUFFIXES:
        if path is None:
            raise DataError(f"table '{name}' not found in the working directory or in data_root {data_root}; pass an existing CSV/parquet file")
        return path
    raise DataError(
        f"unknown dataset '{name}': use a MedMNIST name ({', '.join(SUBSETS)}), "
        f"an image folder, a CSV/parquet file or a Hugging Face dataset (hf:ORG/NAME)"
    )
