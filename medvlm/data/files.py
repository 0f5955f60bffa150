"""Bring-your-own classification data: an image folder, a CSV/parquet table of image paths, or an `hf:` dataset.

Images stay on disk and are decoded per item. File sources always serve 3-channel images:
one dataset may mix grayscale and RGB files, and a batch needs one channel count; the model's
batch preprocessing (`medvlm.data.transforms`) handles 3 channels for every model.

Multi-label tables follow CheXpert's convention: 1 positive, 0 negative, blank not mentioned
(-> 0), -1 uncertain, resolved by `label_policy`: "ones" -> 1, "zeros" -> 0, "ignore" -> the
label stays -1 and `ImageFiles.mask` (labels >= 0) is False there. Losses and metrics must use
only masked-in entries: weight BCE by the mask, and score each label on its masked-in rows.
Rows whose labels are all ignored carry no supervision and are dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medvlm.data.base import ClassificationData
from medvlm.data.content import file_digests
from medvlm.data.prompts import generic_prompts
from medvlm.data.hub import load_hub
from medvlm.data.sources import SPLITS, decode_image, image_ref, read_table, split_values
from medvlm.errors import DataError

FRACTIONS = (0.7, 0.1, 0.2)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
LabelPolicy = Literal["ones", "zeros", "ignore"]
_POLICY_VALUE = {"ones": 1, "zeros": 0, "ignore": -1}


class ImageFiles(Dataset):
    """Encoded images plus int64 labels; items are (uint8 [3,S,S], label) like `ArrayImages`.

    A source is an image file's path or, from a Hugging Face dataset, the image's encoded bytes.
    """

    def __init__(self, sources: Sequence[Path | bytes], labels: np.ndarray, image_size: int):
        self.sources = [s if isinstance(s, bytes) else Path(s) for s in sources]
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_image(self.sources[index], self.image_size), self.labels[index]

    @property
    def mask(self) -> torch.Tensor:
        """False where a label is ignored (-1, label_policy='ignore'); True everywhere otherwise."""
        return self.labels >= 0

    def subset(self, indices: np.ndarray) -> ImageFiles:
        """Some rows (used by data-fraction ablations)."""
        idx = np.asarray(indices)
        return ImageFiles([self.sources[i] for i in idx], self.labels.numpy()[idx], self.image_size)

    def digest(self) -> str:
        """The images' contents (not just their names) and the labels: a feature-cache key and lineage."""
        h = hashlib.sha256()
        paths = [s for s in self.sources if isinstance(s, Path)]
        content = dict(zip(paths, file_digests(paths)))
        for source in self.sources:
            line = f"{source}\t{content[source]}" if isinstance(source, Path) else f"sha1:{hashlib.sha1(source).hexdigest()}"
            h.update(f"{line}\n".encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def stratified_split(strata: np.ndarray, seed: int, fractions: Sequence[float] = FRACTIONS) -> dict[str, np.ndarray]:
    """Row indices per split; each stratum (class) is shuffled with `seed` and cut by `fractions`."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for value in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == value))
        n_test, n_val = round(len(idx) * fractions[2]), round(len(idx) * fractions[1])
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}


def _require_rows(source: str | Path, split: str, n: int, why: str) -> None:
    if n == 0:
        raise DataError(f"split '{split}' of {source} is empty: {why}")


# -- image folder -------------------------------------------------------------------------


def load_image_folder(path: str | Path, image_size: int, seed: int) -> ClassificationData:
    """One subfolder per class (sorted names -> label index).

    Uses train/ val/ test/ subfolders where present (val/ optional: then 1/8 of train, stratified);
    otherwise a stratified 70/10/20 split with `seed`.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; pass a folder with one subfolder per class")
    split_dirs = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if split_dirs:
        if not {"train", "test"} <= split_dirs.keys():
            raise DataError(f"image folder {root} has {sorted(split_dirs)} folders; give it train/ and test/ (val/ optional)")
        names = _class_dirs(split_dirs["train"])
        scans = {split: _scan(folder, names) for split, folder in split_dirs.items()}
        files = {split: scan[0] for split, scan in scans.items()}
        labels = {split: scan[1] for split, scan in scans.items()}
        if "val" not in files:
            idx = stratified_split(labels["train"], seed, (7 / 8, 1 / 8, 0.0))
            train_files, train_labels = files["train"], labels["train"]
            for split in ("train", "val"):
                files[split] = [train_files[i] for i in idx[split]]
                labels[split] = train_labels[idx[split]]
        how = "train/val/test folders" if "val" in split_dirs else f"train/test folders, val = 1/8 of train (seed {seed})"
    else:
        names = _class_dirs(root)
        all_files, all_labels = _scan(root, names)
        idx = stratified_split(all_labels, seed)
        files = {split: [all_files[i] for i in idx[split]] for split in SPLITS}
        labels = {split: all_labels[idx[split]] for split in SPLITS}
        how = f"stratified 70/10/20 (seed {seed})"
    for split in SPLITS:
        _require_rows(root, split, len(files[split]), f"too few images for {how}; add images or make train/val/test folders")
    every = sorted(p for split in SPLITS for p in files[split])
    return ClassificationData(
        name=root.name,
        kind="binary" if len(names) == 2 else "multiclass",
        class_names=names,
        prompts=generic_prompts(names),
        splits={split: ImageFiles(files[split], labels[split], image_size) for split in SPLITS},
        modality="medical",
        source=str(root),
        extra={"digest": _listing_digest(every, root), "split": how},
    )


def _class_dirs(folder: Path) -> list[str]:
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"image folder {folder} has {len(names)} class subfolder(s); it needs one subfolder per class, at least two")
    return names


def _scan(folder: Path, names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files under folder/<class>/, sorted, with their class indices."""
    extra = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in names)
    if extra:
        raise DataError(f"class folder(s) {extra} in {folder} are not among the training classes {names}")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(names):
        class_dir = folder / name
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if class_dir.is_dir() else []
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _listing_digest(files: list[Path], root: Path) -> str:
    """Names and contents of every file: changes when files are added, removed, replaced or edited in place."""
    h = hashlib.sha256()
    for p, content in zip(files, file_digests(files)):
        h.update(f"{p.relative_to(root)}\t{content}\n".encode())
    return f"sha256:{h.hexdigest()}"


# -- CSV / parquet table ------------------------------------------------------------------


def load_table(
    path: str | Path,
    image_column: str,
    label_columns: Sequence[str],
    label_policy: LabelPolicy = "zeros",
    image_size: int = 224,
    seed: int = 0,
    split_column: str | None = "split",
) -> ClassificationData:
    """A CSV/parquet file of image paths (relative to the file's folder) and labels; see `table_classification`."""
    path = Path(path).expanduser()
    table = read_table(path)
    data = table_classification(table, path.stem, path, image_column, label_columns, label_policy, image_size, seed,
                                split_column, lambda column: _image_paths(column, path))
    every = sorted({p for ds in data.splits.values() for p in ds.sources})
    data.extra["digest"] = _listing_digest([path, *every], Path(path.anchor))
    return data


def load_hub_table(dataset: str, data_root: str | Path, image_column: str, label_columns: Sequence[str],
                   label_policy: LabelPolicy = "zeros", image_size: int = 224, seed: int = 0) -> ClassificationData:
    """An `hf:` dataset (`medvlm.data.hub`): label column `label` unless label_columns says otherwise; a ClassLabel
    column keeps its label indices and names."""
    labels = list(label_columns) or ["label"]
    hub = load_hub(dataset, data_root, SPLITS, {image_column: "image_column", **dict.fromkeys(labels, "label_columns")})
    data = table_classification(hub.rows, hub.name, dataset, image_column, labels, label_policy, image_size, seed,
                                "split" if hub.split else None, lambda column: _encoded_sources(column, hub.rows),
                                hub.class_names.get(labels[0]) if len(labels) == 1 else None)
    data.source = hub.source
    data.extra.update(digest=hub.digest, split=hub.split or data.extra["split"])
    return data


def table_classification(
    table: pd.DataFrame,
    name: str,
    where: str | Path,
    image_column: str,
    label_columns: Sequence[str],
    label_policy: LabelPolicy,
    image_size: int,
    seed: int,
    split_column: str | None,
    images: Callable[[pd.Series], list[Path | bytes]],
    class_names: list[str] | None = None,
) -> ClassificationData:
    """A table of images (`images` turns the image column into sources) and labels, split and checked.

    One label column holds classes (integers or strings; sorted values -> label index, or the given
    `class_names` for label indices); several label columns are multi-label, CheXpert-style (see the
    module docstring). Rows are split by `split_column` (train/val/test; without val rows, val = 1/8
    of train, stratified) when the table has it, otherwise stratified 70/10/20 with `seed`.
    """
    label_columns = list(label_columns)
    if not label_columns:
        raise DataError(f"no label column given for {where}: set label_columns (one column = classes, several = multi-label)")
    if label_policy not in _POLICY_VALUE:
        raise DataError(f"label_policy '{label_policy}' is not one of {list(_POLICY_VALUE)}")
    missing = [c for c in [image_column, *label_columns] if c not in table.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in {where}; its columns are {list(table.columns)}: set image_column / label_columns")

    if len(label_columns) == 1:
        column = table[label_columns[0]]
        labels, names = _indexed_labels(column, class_names, where) if class_names else _class_labels(column, where)
        kind = "binary" if len(names) == 2 else "multiclass"
    else:
        labels, names, kind = _multilabel(table[label_columns], label_policy, where), label_columns, "multilabel"
    keep = labels.reshape(len(labels), -1).max(axis=1) >= 0
    dropped = int((~keep).sum())
    table, labels = table[keep], labels[keep]
    why = f"; {dropped} rows whose labels are all uncertain (-1) were dropped (label_policy=ignore)" if dropped else ""
    strata = labels if kind != "multilabel" else np.zeros(len(labels))

    if split_column and split_column in table.columns:
        split_of = split_values(table[split_column], Path(where), split_column).to_numpy()
        idx = {split: np.flatnonzero(split_of == split) for split in SPLITS}
        how = f"column '{split_column}'"
        if not len(idx["val"]) and len(idx["train"]):
            carved = stratified_split(strata[idx["train"]], seed, (7 / 8, 1 / 8, 0.0))
            idx["train"], idx["val"] = idx["train"][carved["train"]], idx["train"][carved["val"]]
            how += f", val = 1/8 of train (seed {seed})"
        for split in SPLITS:
            _require_rows(where, split, len(idx[split]), f"no rows with {split_column}='{split}'{why}")
    else:
        idx = stratified_split(strata, seed)
        for split in SPLITS:
            _require_rows(where, split, len(idx[split]), f"too few rows for a 70/10/20 split{why}")
        how = f"stratified 70/10/20 (seed {seed})"

    files = images(table[image_column])
    return ClassificationData(
        name=name,
        kind=kind,
        class_names=names,
        prompts=generic_prompts(names),
        splits={split: ImageFiles([files[i] for i in idx[split]], labels[idx[split]], image_size) for split in SPLITS},
        modality="medical",
        source=str(where),
        extra={"split": how, "label_policy": label_policy, "ignored_labels": int((labels < 0).sum())},
    )


def _indexed_labels(column: pd.Series, names: list[str], where: str | Path) -> tuple[np.ndarray, list[str]]:
    """A ClassLabel column: its values are already label indices into `names`."""
    values = column.to_numpy()
    bad = (values < 0) | (values >= len(names))
    if bad.any():
        raise DataError(f"column '{column.name}' of {where} has {int(bad.sum())} label(s) outside its {len(names)} "
                        f"classes (first at row {int(np.argmax(bad))}, -1 = unlabelled); drop those rows")
    return values.astype(np.int64), list(names)


def _encoded_sources(column: pd.Series, table: pd.DataFrame) -> list[Path | bytes]:
    """A Hugging Face image column (`{bytes, path}` structs, bytes or paths) as ImageFiles sources."""
    sources = [image_ref(v, Path(folder))[1] for v, folder in zip(column, table.loc[column.index, "_folder"])]
    return [s if isinstance(s, bytes) else Path(s) for s in sources]


def _class_labels(column: pd.Series, path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Class indices (sorted distinct values -> 0..C-1) and their names."""
    blank = column.isna().to_numpy()
    if blank.any():
        raise DataError(f"column '{column.name}' of {path} has {int(blank.sum())} blank label(s) (first at row {int(np.argmax(blank))}); fill or drop them")
    values = column.to_numpy()
    if pd.api.types.is_numeric_dtype(column):
        if not np.all(np.mod(values, 1) == 0):
            raise DataError(f"column '{column.name}' of {path} holds non-integer numbers; class labels must be integers or strings")
        values = values.astype(np.int64)
    else:
        values = values.astype(str)
    classes, labels = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"column '{column.name}' of {path} has a single class {classes.tolist()}; classification needs at least two")
    return labels.astype(np.int64), [str(c) for c in classes]


def _multilabel(frame: pd.DataFrame, policy: LabelPolicy, path: str | Path) -> np.ndarray:
    """(N, L) int64 with 1/0 and, under policy 'ignore', -1 for uncertain entries."""
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    odd = (numeric.isna() & frame.notna()) | ~(numeric.isin([-1, 0, 1]) | numeric.isna())
    if odd.to_numpy().any():
        column = odd.any().idxmax()
        values = sorted(map(str, frame.loc[odd[column], column].unique()))[:5]
        raise DataError(f"column '{column}' of {path} holds {values}; multi-label columns take 1, 0, -1 (uncertain) or blank")
    values = numeric.fillna(0).to_numpy(dtype=np.int64)
    return np.where(values == -1, _POLICY_VALUE[policy], values)


def _image_paths(column: pd.Series, path: Path) -> list[Path]:
    """Absolute image paths (relative ones are read from the table's folder); all must exist."""
    if column.isna().any():
        raise DataError(f"column '{column.name}' of {path} has {int(column.isna().sum())} blank image path(s); fill or drop those rows")
    files = [p if p.is_absolute() else path.parent / p for p in (Path(str(v)).expanduser() for v in column)]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(files)} images listed in {path} are missing, e.g. {missing[0]}; paths are read relative to the table's folder")
    return files
