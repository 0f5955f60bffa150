"""Image-caption data for retrieval: ROCO's native layout, HF-style parquet tables, any CSV/parquet.

Every source becomes a `CaptionData`: per split, the distinct images and the captions, with
`text_to_image[j]` the index of caption j's image. Positives are matched by that index, never
by caption text: two identical captions on different images stay two items (counted by
`CaptionSplit.duplicate_captions`). Rows that reference the same image (the same path, or the
same embedded bytes) make one gallery image with several captions, as in COCO.

Sources:
- ROCO, native layout: `{train,validation,test}/{radiology,non-radiology}/captions.txt`
  (`ROCO_xxxxx<TAB>caption`) with the figures in `images/ROCO_xxxxx.jpg` beside it. ROCO's fetch
  script cannot download every figure, so caption rows whose image file is missing are skipped
  and counted (`CaptionSplit.skipped`), never silently.
- Tables: one parquet/CSV file or a folder of them with an image column (HF image struct
  `{bytes, path}`, raw bytes or a path relative to the table's folder) and a caption column, such
  as the Hugging Face `eltorio/ROCO-radiology` / `ROCOv2-radiology` parquet files. Missing image
  files are skipped and counted as for ROCO.
- Hugging Face datasets, `hf:ORG/NAME` or a `save_to_disk` folder `hf:FOLDER` (`medvlm.data.hub`),
  read as a table with the dataset's own splits.

Subsets: `radiology`, `non-radiology` or `mixed` (both). Tables take a subset from a `subset`
column; without one only `mixed` (every row) applies.

Splits: ROCO's folders (no `validation/` folder: validation = a seeded fifth of the training
images); tables by file name (`train*`, `val*`/`validation*`, `test*`) or a `split` column, else
image-based and seeded (test 20 % of the images, validation 20 % of the rest; a function of the
table, missing files included, so a partial download splits its images the same way). Only the
splits a run needs are read: zero-shot reads just `test`.

Images stay encoded (paths or bytes) and are decoded a batch at a time at the model's input
size (`IndexedImages`), since a ROCO training split does not fit in memory decoded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from medvlm.data.content import content_keys
from medvlm.hf_name import is_hf
from medvlm.data.hub import load_hub
from medvlm.data.sources import (SPLITS, candidates, decode_image, image_ref, image_split, locate, read_tables,
                                 source_kind, split_values)
from medvlm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Subset = Literal["radiology", "non-radiology", "mixed"]
ROCO_SUBSETS = ("radiology", "non-radiology")
ROCO_SPLIT_DIRS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
ROCO_CAPTIONS = "captions.txt"
ROCO_ALIASES = ("roco", "ROCO", "roco-dataset")
HOW_TO_GET_ROCO = ("fetch ROCO with the scripts of github.com/razorx89/roco-dataset (data/<split>/<subset>/"
                   "captions.txt and images/ROCO_xxxxx.jpg), or set data_root / pass dataset=PATH")
DECODE_THREADS = 8


class IndexedImages(Dataset):
    """Items (uint8 [3, S, S], i): row i shows image `image_of_row[i]`, decoded at size S.

    Over the distinct images (`image_of_row` = 0..M-1) it is the gallery; over the captions
    (`image_of_row` = text_to_image) item j is caption j's image, so the index a batch carries
    is the pair index that looks up caption j's tokens.
    """

    def __init__(self, sources: Sequence[str | bytes], keys: Sequence[str], image_of_row: torch.Tensor,
                 image_size: int):
        self.sources, self.keys, self.image_of_row, self.image_size = sources, keys, image_of_row, image_size

    def __len__(self) -> int:
        return len(self.image_of_row)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_image(self.sources[int(self.image_of_row[index])], self.image_size), torch.tensor(index)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch; decoded in threads (PIL releases the GIL) unless a DataLoader worker already parallelises."""
        sources = [self.sources[int(i)] for i in self.image_of_row[torch.as_tensor(indices)]]
        if get_worker_info() is not None or len(sources) < 2:
            images = [decode_image(s, self.image_size) for s in sources]
        else:
            with ThreadPoolExecutor(min(DECODE_THREADS, len(sources))) as pool:
                images = list(pool.map(lambda s: decode_image(s, self.image_size), sources))
        return torch.stack(images), torch.as_tensor(indices, dtype=torch.long)

    def digest(self) -> str:
        """Image contents (files hashed, encoded bytes by their sha1 key), rows and size: a feature-cache key."""
        h = hashlib.sha256(f"{self.image_size}\n".encode())
        for key, content in zip(self.keys, content_keys(self.keys)):
            h.update(f"{key}\t{content}\n".encode())
        h.update(self.image_of_row.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class CaptionSplit:
    """One split: distinct images (`image_*`, in first-mention order; `image_subsets` is radiology,
    non-radiology or '' where the source does not say) and captions; caption j shows image
    `text_to_image[j]`. `skipped` counts dropped caption rows by reason."""

    image_keys: list[str]
    image_sources: list[str | bytes]
    image_names: list[str]
    image_subsets: list[str]
    captions: list[str]
    text_to_image: torch.Tensor
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.image_keys)

    @property
    def duplicate_captions(self) -> int:
        """Captions whose exact text an earlier caption of the split already has (string matching would
        count each as a hit on the wrong image)."""
        return len(self.captions) - len(set(self.captions))

    def select_images(self, indices: Sequence[int]) -> CaptionSplit:
        """These images, in this order, with all their captions (data-fraction ablations)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        position = torch.full((self.n_images,), -1, dtype=torch.long)
        position[idx] = torch.arange(len(idx))
        keep = position[self.text_to_image] >= 0
        pick = idx.tolist()
        return CaptionSplit(image_keys=[self.image_keys[i] for i in pick],
                            image_sources=[self.image_sources[i] for i in pick],
                            image_names=[self.image_names[i] for i in pick],
                            image_subsets=[self.image_subsets[i] for i in pick],
                            captions=[c for c, k in zip(self.captions, keep.tolist()) if k],
                            text_to_image=position[self.text_to_image][keep], skipped=dict(self.skipped))

    def images(self, image_size: int) -> IndexedImages:
        """The gallery: each distinct image once, item index = image index."""
        return IndexedImages(self.image_sources, self.image_keys, torch.arange(self.n_images), image_size)

    def pairs(self, image_size: int) -> IndexedImages:
        """One item per caption (its image), item index = pair index (caption index)."""
        return IndexedImages(self.image_sources, self.image_keys, self.text_to_image, image_size)

    def digest(self) -> str:
        """Image contents and captions (dataset lineage)."""
        h = hashlib.sha256("\n".join(content_keys(self.image_keys)).encode())
        for caption, image in zip(self.captions, self.text_to_image.tolist()):
            h.update(f"\n{image}\t{caption}".encode())
        return h.hexdigest()[:16]


@dataclass
class CaptionData:
    """The requested splits of one image-caption source, the subset, and how it was split."""

    name: str
    source: str
    subset: Subset
    splits: dict[str, CaptionSplit]
    split: str


def load_captions(dataset: str, *, data_root: str | Path, subset: Subset = "mixed",
                  splits: Sequence[str] = SPLITS, seed: int = 0, image_column: str = "image",
                  caption_column: str = "caption") -> CaptionData:
    """Read `splits` of a caption source given by name (`roco`) or path; see the module docstring."""
    if subset not in (*ROCO_SUBSETS, "mixed"):
        raise ConfigError(f"subset={subset} is not one of radiology, non-radiology, mixed")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ConfigError(f"splits {unknown or list(splits)} are not among {SPLITS}")
    # A missing validation split is carved from the training images, so it needs those.
    needed = set(splits) | ({"train"} if "val" in splits else set())
    if is_hf(dataset):
        hub = load_hub(dataset, data_root, needed, {image_column: "image_column", caption_column: "caption_column"},
                       optional=("subset",))
        rows, how = _table_rows(hub.rows, hub.split, dataset, image_column, caption_column, subset, needed, seed)
        name, source = hub.name, hub.source
    else:
        kind, path = locate_source(dataset.strip(), Path(data_root).expanduser())
        if kind == "roco":
            rows, how = _roco_rows(path, subset, needed, seed)
            name = "roco"
        else:
            table, named = read_tables(path, needed)
            rows, how = _table_rows(table, "file names" if named else None, path, image_column, caption_column, subset,
                                    needed, seed)
            name = path.stem
        source = str(path)
    built = {split: _build_split(rows[rows["split"] == split], split, source) for split in SPLITS if split in splits}
    return CaptionData(name=name, source=source, subset=subset, splits=built, split=how)


# -- locating -----------------------------------------------------------------------------


def _is_roco(folder: Path) -> bool:
    return any((folder / d / s / ROCO_CAPTIONS).is_file()
               for dirs in ROCO_SPLIT_DIRS.values() for d in dirs for s in ROCO_SUBSETS)


def locate_source(name: str, data_root: Path) -> tuple[str, Path]:
    """(kind, path): kind is roco (native layout) or table (a file or a folder of tables)."""
    if name.lower() == "roco":
        folder = locate(name, data_root, ROCO_ALIASES)
        if folder is None:
            tried = ", ".join(f"{p}/" for p in candidates(name, data_root, ROCO_ALIASES))
            raise DataError(f"ROCO not found: tried {tried}; {HOW_TO_GET_ROCO}")
        return ("roco" if _is_roco(folder) else "table"), folder
    return source_kind(
        name, data_root, lambda folder: "roco" if _is_roco(folder) else None,
        f"image-caption data: expected ROCO's <split>/<subset>/{ROCO_CAPTIONS} layout or parquet/CSV files with image "
        f"and caption columns",
        f"unknown retrieval dataset '{name}': use roco (a folder under data_root {data_root}), a folder in ROCO's "
        f"layout, or a parquet/CSV file (or folder of them) with image and caption columns")


# -- readers: one row per caption with split, image_key/image_source/image_name, caption ---


def _roco_rows(root: Path, subset: Subset, needed: set[str], seed: int) -> tuple[pd.DataFrame, str]:
    subsets = ROCO_SUBSETS if subset == "mixed" else (subset,)
    frames, carved = [], False
    for split in SPLITS:
        if split not in needed:
            continue
        folder = next((root / d for d in ROCO_SPLIT_DIRS[split] if (root / d).is_dir()), None)
        if folder is None:
            if split == "val":
                carved = True
                continue
            raise DataError(f"ROCO split folder {root / ROCO_SPLIT_DIRS[split][0]} not found; {HOW_TO_GET_ROCO}")
        for sub in subsets:
            frames.append(_roco_captions(folder / sub).assign(split=split, subset=sub))
    rows = pd.concat(frames, ignore_index=True)
    how = f"ROCO folders, subset {subset}"
    if carved:
        rows, how = _carve_val(rows, seed), how + f"; validation = 20 % of the training images (seed {seed})"
    return rows, how


def _roco_captions(folder: Path) -> pd.DataFrame:
    file = folder / ROCO_CAPTIONS
    if not file.is_file():
        raise DataError(f"ROCO captions file {file} not found; {HOW_TO_GET_ROCO}")
    ids, captions = [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        roco_id, tab, caption = line.partition("\t")
        if not tab:
            raise DataError(f"line {number} of {file} has no tab; ROCO captions lines are 'ROCO_xxxxx<TAB>caption'")
        ids.append(roco_id.strip())
        captions.append(caption)
    paths = [str(folder / "images" / f"{i}.jpg") for i in ids]
    return pd.DataFrame({"image_key": paths, "image_source": paths, "image_name": ids, "caption": captions})


def _table_rows(table: pd.DataFrame, split_how: str | None, path: str | Path, image_column: str, caption_column: str,
                subset: Subset, needed: set[str], seed: int) -> tuple[pd.DataFrame, str]:
    """Caption rows of a table; `split_how` says how its `split` column (train/val/test) was set, None when it was not."""
    missing = [c for c in (image_column, caption_column) if c not in table.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in {path}; its columns are {list(table.columns)[:12]}: "
                        f"set image_column / caption_column")
    if subset != "mixed":
        if "subset" not in table.columns:
            raise ConfigError(f"subset={subset} needs a 'subset' column in {path} (radiology/non-radiology); "
                              f"use subset=mixed for every row")
        table = table[table["subset"].astype(str).str.strip().str.lower() == subset]
    if table.empty:
        raise DataError(f"{path} has no rows for subset={subset} in splits {sorted(needed)}; check the table or the subset")
    keys, sources, names = zip(*(image_ref(v, Path(folder)) for v, folder in zip(table[image_column], table["_folder"])))
    rows = pd.DataFrame({"image_key": keys, "image_source": sources, "image_name": names,
                         "caption": table[caption_column].map(lambda c: "" if pd.isna(c) else str(c)).to_numpy(),
                         "subset": table["subset"].astype(str).str.strip().str.lower().to_numpy()
                         if "subset" in table.columns else ""})
    if split_how:
        rows["split"], how = table["split"].to_numpy(), split_how
    elif "split" in table.columns:
        rows["split"], how = split_values(table["split"], Path(path)).to_numpy(), "column 'split'"
    else:
        sets = image_split(rows["image_key"].to_numpy(), seed)
        rows["split"] = rows["image_key"].map({k: s for s, ks in sets.items() for k in ks})
        return rows, f"image-based (seed {seed}): {len(sets['train'])}/{len(sets['val'])}/{len(sets['test'])} images"
    if "val" in needed and not (rows["split"] == "val").any():
        rows, how = _carve_val(rows, seed), how + f"; validation = 20 % of the training images (seed {seed})"
    return rows, how


def _carve_val(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    train = rows["split"] == "train"
    val_keys = image_split(rows.loc[train, "image_key"].to_numpy(), seed, test_fraction=0.0)["val"]
    rows = rows.copy()
    rows.loc[train & rows["image_key"].isin(val_keys), "split"] = "val"
    return rows


def _build_split(rows: pd.DataFrame, split: str, where: str | Path) -> CaptionSplit:
    """Drop (and count) blank captions and rows whose image file is missing; index the distinct images."""
    captions = rows["caption"].str.strip()
    blank = (captions == "").to_numpy()
    on_disk = {s: Path(s).is_file() for s in set(rows["image_source"]) if isinstance(s, str)}
    missing = rows["image_source"].map(lambda s: isinstance(s, str) and not on_disk[s]).to_numpy() & ~blank
    skipped = {"missing_image": int(missing.sum()), "blank_caption": int(blank.sum())}
    if skipped["missing_image"]:
        first = rows["image_source"][missing].iloc[0]
        log.warning("%s: skipped %d of %d caption rows whose image file is missing (e.g. %s)",
                    split, skipped["missing_image"], len(rows), first)
    keep = ~(blank | missing)
    if not keep.any():
        why = f"all {len(rows)} caption rows were skipped ({skipped})" if len(rows) else "it has no caption rows"
        raise DataError(f"split '{split}' of {where} is empty: {why}; put the images beside the captions "
                        f"(ROCO: <split>/<subset>/images/), or choose another subset")
    kept = rows[keep]
    codes, keys = pd.factorize(kept["image_key"])
    first = kept.drop_duplicates("image_key")
    return CaptionSplit(image_keys=list(keys), image_sources=list(first["image_source"]),
                        image_names=list(first["image_name"]), image_subsets=list(first["subset"]),
                        captions=list(captions[keep]),
                        text_to_image=torch.as_tensor(codes, dtype=torch.long), skipped=skipped)
