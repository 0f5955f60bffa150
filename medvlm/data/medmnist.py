"""MedMNIST 2D subsets, read straight from their official `.npz` files.

medmnist's own Dataset classes assert the official sample counts, which rejects subsets and
test fixtures, so the file is read with `np.load` and checked here instead. Only the download
goes through the medmnist metadata (URL + MD5, fetched with torchvision's `download_url`,
exactly as `medmnist.dataset.MedMNIST.download` does).
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets.utils import download_url

from medvlm.data.base import ArrayImages, ClassificationData, LabelKind
from medvlm.data.prompts import MODALITIES, class_names, class_prompts
from medvlm.errors import DataError
from medvlm.network import clipped, unreachable

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to setup default root")
    from medmnist import dataset as medmnist_dataset
    from medmnist.info import INFO

SIZES = (28, 64, 128, 224)
MEDMNIST_DIR = "medmnist"  # the subfolder of data_root, like vqa_rad/ and roco/
SPLITS = ("train", "val", "test")
_KINDS: dict[str, LabelKind] = {
    "binary-class": "binary",
    "multi-class": "multiclass",
    "ordinal-regression": "multiclass",  # graded labels, evaluated as classes (as MedMNIST's evaluator does)
    "multi-label, binary-class": "multilabel",
}


@dataclass(frozen=True)
class SubsetInfo:
    """What medvlm needs from `medmnist.INFO` for one 2D subset."""

    flag: str
    task: str
    kind: LabelKind
    labels: dict[str, str]
    n_channels: int
    n_samples: dict[str, int]
    modality: str

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def file_name(self, size: int) -> str:
        """medmnist's naming: `<flag>.npz` at 28 px, `<flag>_<size>.npz` otherwise."""
        return f"{self.flag}{_size_flag(size)}.npz"

    def url(self, size: int) -> str:
        return INFO[self.flag][f"url{_size_flag(size)}"]

    def md5(self, size: int) -> str:
        return INFO[self.flag][f"MD5{_size_flag(size)}"]


def _size_flag(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def _is_2d(info: dict) -> bool:
    return issubclass(getattr(medmnist_dataset, info["python_class"]), medmnist_dataset.MedMNIST2D)


SUBSETS: dict[str, SubsetInfo] = {
    flag: SubsetInfo(
        flag=flag,
        task=info["task"],
        kind=_KINDS[info["task"]],
        labels=dict(info["label"]),
        n_channels=info["n_channels"],
        n_samples=dict(info["n_samples"]),
        modality=MODALITIES.get(flag, "medical"),
    )
    for flag, info in INFO.items()
    if _is_2d(info)
}


def subset_info(flag: str) -> SubsetInfo:
    """The 2D subset called `flag` (case-insensitive), or a DataError naming the valid ones."""
    key = flag.strip().lower()
    if key in SUBSETS:
        return SUBSETS[key]
    valid = ", ".join(SUBSETS)
    if key in INFO:
        raise DataError(f"MedMNIST subset '{flag}' is 3D; medvlm reads the 2D subsets: {valid}")
    raise DataError(f"unknown MedMNIST subset '{flag}': use one of {valid}, or an image folder or CSV/parquet file")


def candidate_paths(flag: str, size: int, root: str | Path) -> list[Path]:
    """Where a subset's file may be: `<root>/medmnist/<file>` (data_root = the parent of every dataset,
    as for vqa_rad/ and roco/) or `<root>/<file>` (data_root = the folder of the npz files)."""
    root = Path(root).expanduser()
    name = subset_info(flag).file_name(size)
    return [root / MEDMNIST_DIR / name, root / name]


def download_folder(root: str | Path) -> Path:
    """Where a download goes: root itself when it already is a folder of npz files, else `<root>/medmnist/`."""
    root = Path(root).expanduser()
    return root if root.name == MEDMNIST_DIR or any(root.glob("*mnist*.npz")) else root / MEDMNIST_DIR


def load_medmnist(flag: str, size: int, root: str | Path, download: bool = True) -> ClassificationData:
    """Train/val/test of one 2D subset at one image size, from the first of `candidate_paths` that exists."""
    info = subset_info(flag)
    if size not in SIZES:
        raise DataError(f"MedMNIST size {size} does not exist; use one of {', '.join(map(str, SIZES))}")
    path = next((p for p in candidate_paths(flag, size, root) if p.is_file()), None)
    if path is None:
        folder = download_folder(root)
        why = _download(info, size, folder) if download else "download=False"
        path = folder / info.file_name(size)
        if not path.is_file():
            raise _missing(info, size, root, why)
    arrays = _read_npz(path, info.url(size))
    splits = {split: ArrayImages(*_checked_split(info, size, path, split, arrays)) for split in SPLITS}
    digest = _md5(path)
    return ClassificationData(
        name=info.flag,
        kind=info.kind,
        class_names=class_names(info.flag),
        prompts=class_prompts(info.flag),
        splits=splits,
        modality=info.modality,
        source=str(path),
        extra={"digest": f"md5:{digest}", "official_file": digest == info.md5(size), "size": size, "task": info.task},
    )


def locate_medmnist(flag: str, size: int, root: str | Path) -> str:
    """Where the subset will be read from (its file, or its download when Zenodo answers), without reading it."""
    info = subset_info(flag)
    path = next((p for p in candidate_paths(flag, size, root) if p.is_file()), None)
    if path is not None:
        return str(path)
    offline = unreachable(info.url(size))
    if offline:
        raise _missing(info, size, root, f"no download: {offline}")
    return f"download of {info.url(size)}"


def _missing(info: SubsetInfo, size: int, root: str | Path, why: str) -> DataError:
    tried = " and ".join(map(str, candidate_paths(info.flag, size, root)))
    return DataError(f"MedMNIST file {info.file_name(size)} not found: tried {tried} ({why}); download {info.url(size)} "
                     f"into {download_folder(root)}, or set data_root / MEDVLM_DATA to the folder that holds it or its parent")


def _download(info: SubsetInfo, size: int, folder: Path) -> str:
    """Fetch the official file into `folder`; return why it failed (the caller reports it).

    One quick probe first: offline, urllib would otherwise wait on a dead connection.
    """
    offline = unreachable(info.url(size))
    if offline:
        return f"no download: {offline}"
    path = folder / info.file_name(size)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # download_url makes these folders
    try:
        download_url(info.url(size), str(folder), filename=path.name, md5=info.md5(size))
    except Exception as exc:  # any network, disk or checksum failure ends in the same user-facing error
        path.unlink(missing_ok=True)  # never leave a partial or corrupt file behind
        for made in created:  # nor folders the user never asked for (innermost first; only if empty)
            try:
                made.rmdir()
            except OSError:
                break
        return f"automatic download failed: {clipped(str(exc) or type(exc).__name__)}"
    return "downloaded"


def _read_npz(path: Path, url: str) -> dict[str, np.ndarray]:
    keys = [f"{split}_{part}" for split in SPLITS for part in ("images", "labels")]
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"MedMNIST file {path} lacks the arrays {missing}; replace it with the official file from {url}")
            return {k: npz[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"MedMNIST file {path} is corrupt or unreadable ({_first_line(exc)}); delete it and download it again from {url}"
        ) from exc


def _checked_split(info: SubsetInfo, size: int, path: Path, split: str, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """Images and int64 labels of one split, after the checks that make later failures impossible."""
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    where = f"split '{split}' of {path}"
    if len(images) == 0:
        raise DataError(f"{where} is empty; every MedMNIST file needs train, val and test images")
    expected = (size, size) if info.n_channels == 1 else (size, size, info.n_channels)
    if images.dtype != np.uint8 or images.shape[1:] not in (expected, (size, size, info.n_channels)):
        raise DataError(
            f"{where} holds {images.dtype} images of shape {images.shape[1:]}, expected uint8 {expected} "
            f"for {info.flag} at size {size}; check the file name matches its image size"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where} holds {labels.dtype} labels; MedMNIST labels are integers")
    if info.kind == "multilabel":
        if labels.shape != (len(images), info.num_classes):
            raise DataError(f"{where} has labels of shape {labels.shape}, expected ({len(images)}, {info.num_classes})")
        bad = labels[(labels != 0) & (labels != 1)]
        valid = "{0, 1}"
    else:
        if labels.shape not in ((len(images),), (len(images), 1)):
            raise DataError(f"{where} has labels of shape {labels.shape}, expected ({len(images)}, 1)")
        labels = labels.reshape(-1)
        bad = labels[(labels < 0) | (labels >= info.num_classes)]
        valid = f"[0, {info.num_classes})"
    if bad.size:
        raise DataError(
            f"{where} has {bad.size} label(s) outside {valid} for {info.flag}: "
            f"values {np.unique(bad)[:10].tolist()}; the file does not belong to {info.flag}"
        )
    return images, labels.astype(np.int64)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
