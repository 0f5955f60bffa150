"""Hugging Face `datasets` as a source for every task: `dataset=hf:ORG/NAME` or `hf:FOLDER` (see `hf_name`).

A `save_to_disk` folder (found like any dataset path: working directory, then data_root) is read
with `datasets.load_from_disk`; anything else goes to `datasets.load_dataset`, which also takes a
folder of parquet/CSV files. A Hub dataset comes from the local Hugging Face cache when
HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set or the Hub does not answer (one short probe, as for
models), so an air-gapped machine fails in seconds, not after a minute of retries.

The result is one pandas table in the shape the task's own table readers take (`read_tables`):
the wanted columns, `_folder` for relative image paths and, when the dataset names a train and a
test split, a `split` column of train/val/test. Images stay encoded (`Image(decode=False)` gives
the `{bytes, path}` struct `image_ref` reads), so content digests hash their bytes and each task
decodes them as it decodes parquet images. Splits: the dataset's own when it has a test split (a
missing validation split is carved from train by the task, as for tables), else every row pooled
and split by the task (stratified or by image, seeded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medvlm.data.content import file_digests
from medvlm.hf_name import HfName, parse_hf
from medvlm.data.sources import SPLIT_WORDS, SPLITS, locate
from medvlm.errors import ConfigError, DataError
from medvlm.network import clipped
from medvlm.zoo.hub import hub_unreachable

SAVED_MARKERS = ("dataset_dict.json", "state.json")
HOW_TO_GET = ("load it once where the network allows (python -c \"import datasets; datasets.load_dataset('{name}')\") "
              "so it lands in the Hugging Face cache (HF_HOME), or save_to_disk it and pass dataset=hf:FOLDER")


@dataclass
class HubTable:
    """The rows of the splits read, plus what each task needs to know about them."""

    name: str                           # short display name: the dataset's or folder's last path part
    source: str                         # lineage: the save_to_disk folder or the Hub page
    rows: pd.DataFrame
    split: str | None                   # how `rows["split"]` was set; None: no test split, the task splits
    class_names: dict[str, list[str]]   # ClassLabel columns -> their names, in label order
    digest: str                         # sha256 of the Arrow files read


def load_hub(dataset: str, data_root: str | Path, needed: Collection[str], columns: Mapping[str, str],
             optional: Sequence[str] = ()) -> HubTable:
    """The `needed` splits of an `hf:` dataset as one table of `columns` (column name -> the parameter that
    names it; a missing one is a DataError naming the parameter) plus any `optional` columns it has."""
    ref = parse_hf(dataset)
    splits, source = _open(ref, Path(data_root).expanduser())
    roles = _roles(ref, list(splits))
    given = "test" in roles
    if given:
        wanted = [r for r in SPLITS if r in needed or (r == "train" and "val" in needed)]
        absent = [r for r in wanted if r not in roles and r != "val"]
        if absent:
            raise DataError(f"{ref} has no {' or '.join(absent)} split (its splits: {list(splits)}); name one with "
                            f"{absent[0]}=SPLIT in the hf: name")
        parts = {r: splits[roles[r]] for r in wanted if r in roles}
        how = "the dataset's splits (" + ", ".join(f"{r}={roles[r]}" for r in parts) + ")"
    else:
        parts = {name: splits[name] for name in (list(roles.values()) or list(splits))}
        how = None
    frames, class_names, arrow_files = [], {}, []
    for role, ds in parts.items():
        missing = {col: param for col, param in columns.items() if col not in ds.column_names}
        if missing:
            raise DataError(f"{ref} has no column(s) {sorted(missing)} (its columns: {ds.column_names[:12]}); "
                            f"set {', '.join(sorted(set(missing.values())))} to the right column(s)")
        arrow_files += [f["filename"] for f in ds.cache_files]
        keep = [*columns, *(c for c in optional if c in ds.column_names and c not in columns)]
        ds = _encoded_images(ds.select_columns(keep))
        class_names.update(_class_names(ds))
        frame = ds.to_pandas()
        frames.append(frame.assign(split=role) if given else frame)
    rows = pd.concat(frames, ignore_index=True).assign(_folder=source if Path(source).is_dir() else ".")
    digest = hashlib.sha256("\n".join(sorted(file_digests(arrow_files))).encode()).hexdigest()
    return HubTable(Path(ref.name).name, source, rows, how, class_names, f"sha256:{digest}")


def locate_hub(dataset: str, data_root: str | Path) -> str:
    """Where an `hf:` dataset will be read from, checked without reading its rows (study preflight)."""
    return _open(parse_hf(dataset), Path(data_root).expanduser(), rows=False)[1]


def _open(ref: HfName, data_root: Path, rows: bool = True) -> tuple[dict, str]:
    """(split name -> Dataset, source) of a save_to_disk folder or a `load_dataset` name.

    With rows=False only the builder is resolved (a Hub dataset's files are not downloaded).
    """
    # lazy: Hugging Face `datasets` loads only for hf: datasets
    import datasets

    folder = locate(ref.name, data_root)
    if folder is not None and folder.is_dir() and any((folder / m).is_file() for m in SAVED_MARKERS):
        if ref.config or ref.revision:
            raise ConfigError(f"{ref}: config and revision select a Hub dataset; {folder} is a save_to_disk folder, "
                              f"drop them")
        if not rows:
            return {}, str(folder)
        try:
            saved = datasets.load_from_disk(str(folder))
        except (datasets.exceptions.DatasetsError, OSError, ValueError) as exc:
            raise DataError(f"cannot read the save_to_disk folder {folder} ({clipped(str(exc))}); write it again with "
                            f"save_to_disk") from None
        if isinstance(saved, datasets.Dataset):
            return {str(saved.split or "train"): saved}, str(folder)
        return dict(saved), str(folder)
    name = str(folder) if folder is not None else ref.name
    offline = _offline_reason() if folder is None else None
    try:
        if not rows:
            datasets.load_dataset_builder(name, ref.config, revision=ref.revision)
            return {}, _page(ref, folder)
        loaded = datasets.load_dataset(name, ref.config, revision=ref.revision)
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as exc:
        why = clipped(str(exc) or type(exc).__name__)
        where = f"; the Hub cannot be used ({offline}) and it is not in the local cache" if offline else ""
        raise DataError(f"Hugging Face dataset {ref} cannot be loaded ({why}){where}: "
                        f"{HOW_TO_GET.format(name=ref.name)}") from None
    return dict(loaded), _page(ref, folder)


def _page(ref: HfName, folder: Path | None) -> str:
    return str(folder) if folder is not None else f"https://huggingface.co/datasets/{ref.name}"


def _offline_reason() -> str | None:
    """Why the Hub cannot be used, or None; when it cannot, `datasets` is switched to its offline (cache) mode."""
    # lazy: Hugging Face `datasets` loads only for hf: datasets
    import datasets.config

    if datasets.config.HF_HUB_OFFLINE:
        return "HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set"
    reason = hub_unreachable()
    if reason:
        datasets.config.HF_HUB_OFFLINE = True  # read at call time by `load_dataset`
    return reason


def _roles(ref: HfName, available: list[str]) -> dict[str, str]:
    """medvlm split -> the dataset's split: as the `hf:` name maps them, else by name (validation -> val, ...)."""
    if ref.splits:
        unknown = sorted(set(ref.splits.values()) - set(available))
        if unknown:
            raise DataError(f"{ref} has no split(s) {unknown} (its splits: {available}); set train=/val=/test= "
                            f"in the hf: name to some of those")
        return dict(ref.splits)
    roles: dict[str, str] = {}
    for name in available:
        role = SPLIT_WORDS.get(name.lower())
        if role and role not in roles:
            roles[role] = name
    return roles


def _encoded_images(ds):
    """Image columns as `{bytes, path}` structs: decoding waits for the task, at the model's size."""
    # lazy: Hugging Face `datasets` loads only for hf: datasets
    import datasets

    for column, feature in ds.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _class_names(ds) -> dict[str, list[str]]:
    # lazy: Hugging Face `datasets` loads only for hf: datasets
    import datasets

    return {column: list(feature.names) for column, feature in ds.features.items()
            if isinstance(feature, datasets.ClassLabel)}
