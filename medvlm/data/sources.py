"""What every dataset source shares: finding it, reading its tables, naming its splits, decoding its images.

MedMNIST, image folders, classification tables, caption tables and VQA tables all go through
these helpers, so a path, a split word or an image file means the same thing to every task.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from medvlm.errors import DataError

SPLITS = ("train", "val", "test")
TABLE_SUFFIXES = (".csv", ".parquet")
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "validate": "val", "dev": "val", "test": "test", "testing": "test"}


# -- locating -----------------------------------------------------------------------------


def locate(name: str, data_root: str | Path, aliases: Sequence[str] = ()) -> Path | None:
    """The path a `dataset` argument means, or None.

    A path is taken as given (relative to the working directory) first, then under `data_root`.
    A well-known dataset's `aliases` are folder names, looked up under `data_root` first.
    """
    found = (c for c in candidates(name, data_root, aliases) if (c.is_dir() if aliases else c.exists()))
    return next(found, None)


def candidates(name: str, data_root: str | Path, aliases: Sequence[str] = ()) -> list[Path]:
    """Every path `locate` tries, in order: a missing dataset's message lists them."""
    root = Path(data_root).expanduser()
    if aliases:
        return [c for alias in aliases for c in (root / alias, Path(alias))]
    return [Path(name).expanduser(), root / name]


def source_kind(name: str, data_root: str | Path, layout: Callable[[Path], str | None], what: str,
                  unknown: str) -> tuple[str, Path]:
    """(kind, path) of a dataset given by path: a CSV/parquet file is a "table"; a folder is the kind
    `layout` recognises, else a "table" when it holds CSV/parquet files. `what` says what a folder must
    hold, `unknown` what to pass instead, in the one-line errors."""
    path = locate(name, data_root)
    if path is not None and path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return "table", path
    if path is not None and path.is_dir():
        kind = layout(path) or ("table" if table_files(path) else None)
        if kind is None:
            raise DataError(f"folder {path} holds no {what}")
        return kind, path
    raise DataError(unknown)


def table_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())


# -- tables -------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"table {path} must be a .csv or .parquet file")
    if not path.is_file():
        raise DataError(f"table {path} not found; pass an existing CSV/parquet file")
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read table {path} ({str(exc).strip().splitlines()[0]}); check it is a valid CSV/parquet file") from exc


def read_tables(path: Path, needed: Collection[str] = SPLITS) -> tuple[pd.DataFrame, bool]:
    """One table from a file or a folder of CSV/parquet files; every row keeps its file's folder in
    `_folder` (relative image paths start there). When several files are named train*/val*/test*,
    their names give a `split` column and only the `needed` splits are read. Returns the table and
    whether file names gave the split."""
    files = table_files(path) if path.is_dir() else [path]
    split_of_file = {f: split_from_name(f) if len(files) > 1 else None for f in files}
    named = any(split_of_file.values())
    if named and not all(split_of_file.values()):
        odd = next(f for f, s in split_of_file.items() if not s)
        raise DataError(f"cannot tell the split of {odd} (others are named train/val/test); rename it or remove it")
    frames = [read_table(f).assign(**({"split": split_of_file[f]} if named else {}), _folder=str(f.parent))
              for f in files if not named or split_of_file[f] in needed]
    return pd.concat(frames, ignore_index=True), named


def split_from_name(file: Path) -> str | None:
    words = re.split(r"[^a-z]+", file.stem.lower())
    return next((SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS), None)


def split_values(column: pd.Series, path: Path, name: str = "split") -> pd.Series:
    """A split column's values as train/val/test (validation, dev, testing, ... accepted)."""
    values = column.astype(str).str.strip().str.lower()
    unknown = sorted(set(values) - SPLIT_WORDS.keys())
    if unknown:
        raise DataError(f"column '{name}' of {path} holds {unknown[:5]}; split values must be train, val or test")
    return values.map(SPLIT_WORDS)


def image_split(image_keys: np.ndarray, seed: int, test_fraction: float = TEST_FRACTION) -> dict[str, set]:
    """Distinct images -> train/val/test sets: test floor(20 %), val ceil(20 % of the rest), seeded."""
    unique = np.array(sorted(set(image_keys)), dtype=object)
    order = unique[np.random.default_rng(seed).permutation(len(unique))]
    n_test = int(len(order) * test_fraction)
    n_val = math.ceil((len(order) - n_test) * VAL_FRACTION)
    return {"test": set(order[:n_test]), "val": set(order[n_test:n_test + n_val]), "train": set(order[n_test + n_val:])}


# -- images -------------------------------------------------------------------------------


def load_image(path: Path, image_size: int, pad: tuple[int, int, int] | None = None) -> torch.Tensor:
    """uint8 [3,S,S]: shorter side resized to S (bicubic), then centre-cropped, as CLIP preprocesses.

    With `pad` (an RGB colour) the image is instead centred on a square of that colour and resized to
    S x S, nothing cut off: LLaVA's `image_aspect_ratio: pad` (`expand2square`).
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                img = _to_8bit(img, path)
            img = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); replace or remove that file") from exc
    if pad is not None:
        side = max(img.size)
        square = Image.new("RGB", (side, side), pad)
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        return TF.pil_to_tensor(TF.resize(square, [image_size, image_size], interpolation=InterpolationMode.BICUBIC))
    img = TF.resize(img, image_size, interpolation=InterpolationMode.BICUBIC)
    return TF.pil_to_tensor(TF.center_crop(img, image_size))


def _to_8bit(img: Image.Image, path) -> Image.Image:
    """16-bit/float scans (DICOM exports) min-max scaled to 0..255; PIL's own conversion clips them.

    A NaN or inf pixel would turn the whole scaled image black (or NaN): refuse the file instead.
    """
    arr = np.asarray(img, dtype=np.float64)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise DataError(f"image {path} has {bad} non-finite pixel(s) (NaN or inf); fix or remove that file")
    low, high = arr.min(), arr.max()
    scaled = (arr - low) * (255.0 / (high - low)) if high > low else np.zeros_like(arr)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def decode_image(source: str | Path | bytes, image_size: int, pad: tuple[int, int, int] | None = None) -> torch.Tensor:
    """uint8 [3, S, S] from a path or encoded bytes, preprocessed like every file source (`load_image`)."""
    return load_image(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source), image_size, pad)


def image_ref(value, folder: Path) -> tuple[str, str | bytes, str]:
    """(identity, source, display name) of a table cell: HF image struct, raw bytes or a path."""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if data is None:
            value = name
        else:
            digest = hashlib.sha1(data).hexdigest()
            return f"sha1:{digest}", bytes(data), str(name or digest[:12])
    if isinstance(value, (bytes, bytearray)):
        digest = hashlib.sha1(value).hexdigest()
        return f"sha1:{digest}", bytes(value), digest[:12]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise DataError(f"an image cell in the table under {folder} is empty; fill or drop that row")
    p = Path(str(value)).expanduser()
    p = p if p.is_absolute() else folder / p
    return str(p), str(p), p.name
