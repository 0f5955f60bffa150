"""VQA datasets: VQA-RAD (original JSON), SLAKE (native JSON), PathVQA, any parquet/CSV table, `hf:` datasets.

Every source becomes one `VQAData`: a table of QA rows per split, plus every distinct image
decoded once, at the model's input size, into one uint8 tensor that rows point into by index.
Training batches are then tensor indexing, never per-sample decoding; the same image asked
about ten times is decoded and (frozen strategy) encoded once.

Splits (`split`):
- `auto` (default): VQA-RAD image-based; SLAKE its own files (already image-disjoint);
  tables their own split (file names `train*/val*/test*` or a `split` column), else image-based.
- `image`: every row pooled, then split by image with `seed`: no image in two splits.
  Fractions follow the MIDL paper on VQA-RAD: test = floor(20 % of images), val =
  ceil(20 % of the rest), which on VQA-RAD's 314 images gives exactly 201/51/62 images
  (about 1473/354/421 QA pairs, depending on the seed).
- `official`: the source's own split; VQA-RAD's is `phrase_type` `test_*` = test (202 images
  are shared with train). Where a source has no validation split, it is carved from the
  training images with `seed`.

Closed/open comes from `answer_type` where present (VQA-RAD's "CLOSED " trailing-space quirk
stripped), otherwise a yes/no answer is closed. Answers are kept raw but stringified (five
VQA-RAD answers are JSON integers); normalisation belongs to the answer vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from medvlm.data.base import BatchRows
from medvlm.data.content import content_keys
from medvlm.hf_name import is_hf
from medvlm.data.hub import load_hub
from medvlm.data.sources import (SPLITS, candidates, decode_image, image_ref, image_split, locate, read_tables,
                                 source_kind, split_values)
from medvlm.errors import ConfigError, DataError

SplitMode = Literal["auto", "image", "official"]
META_COLUMNS = ("question_type", "content_type", "modality", "organ")
YES_NO = frozenset({"yes", "no"})
VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
VQA_RAD_IMAGES = "VQA_RAD Image Folder"
SLAKE_VAL_FILES = ("validation.json", "validate.json")
ALIASES = {
    "vqa_rad": ("vqa_rad", "vqa-rad", "vqarad", "VQA_RAD"),
    "slake": ("slake", "Slake1.0", "SLAKE"),
    "pathvqa": ("pathvqa", "path-vqa", "path_vqa", "PathVQA"),
}
HOW_TO_GET = {
    "vqa_rad": f"download the OSF release (https://osf.io/89kps/) and put '{VQA_RAD_JSON}' and '{VQA_RAD_IMAGES}/' there",
    "slake": "download SLAKE (Hugging Face BoKelvin/SLAKE: train/validation/test.json + imgs.zip) and unzip imgs/ there",
    "pathvqa": "save the PathVQA parquet files (Hugging Face flaviagiammarino/path-vqa, data/*.parquet) there",
}


def normalize_answer(text: object) -> str:
    """Lower case, apostrophes dropped, other punctuation (but decimal points) to spaces, whitespace collapsed.

    "Crohn's disease" -> "crohns disease", "X-ray" -> "x ray", " 1.5 cm." -> "1.5 cm".
    """
    text = str(text).lower().replace("\u2019", "'").replace("'", "")
    text = re.sub(r"(?<=\d)\.(?=\d)", "\0", text)
    text = re.sub(r"[^\w\0]+|_", " ", text).replace("\0", ".")
    return " ".join(text.split())


def is_yes_no(answer: str) -> bool:
    return normalize_answer(answer) in YES_NO


class VQARows(BatchRows):
    """QA rows served a whole batch at a time; each input field is a shared table gathered per row.

    `fields` maps an input name to (table, row index): e.g. the images [M, 3, S, S] with each
    row's image index, or question token ids [Q, L] with each row's question index. A batch is
    one gather per field, so an image asked about ten times is stored (and encoded) once.
    Targets are [N, 2]: answer index and closed flag (metrics split open/closed with it).
    """

    def __init__(self, fields: dict[str, tuple[torch.Tensor, torch.Tensor]], targets: torch.Tensor):
        self.fields, self.targets = fields, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = torch.as_tensor(indices)
        return {name: table[rows[idx]] for name, (table, rows) in self.fields.items()}, self.targets[idx]

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, (table, rows) in sorted(self.fields.items()):
            h.update(name.encode())
            h.update(table.contiguous().numpy().tobytes())
            h.update(rows.contiguous().numpy().tobytes())
        h.update(self.targets.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class VQAData:
    """QA rows per split (`image_index` points into `images`), plus where they came from.

    Row columns: image_index, image_name, question, answer (raw string), closed (bool), and
    the metadata columns of `META_COLUMNS` the source has.
    """

    name: str
    source: str
    images: torch.Tensor
    splits: dict[str, pd.DataFrame]
    split: str
    digest: str

    @property
    def meta_columns(self) -> list[str]:
        return [c for c in META_COLUMNS if c in self.splits["test"].columns]

    def split_digest(self, split: str) -> str:
        """Content digest of one split's QA rows and the pixels of the images they ask about (dataset lineage)."""
        frame = self.splits[split][["image_name", "question", "answer", "closed"]]
        h = hashlib.sha256(frame.to_json(orient="values").encode())
        h.update(self.images[torch.as_tensor(self.image_indices(split))].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def image_indices(self, split: str) -> np.ndarray:
        """The distinct images a split asks about."""
        return np.unique(self.splits[split]["image_index"].to_numpy())


@dataclass
class VQARecords:
    """Every QA row with its split (column `split`) and image reference, before any image is decoded."""

    name: str
    source: str | Path
    rows: pd.DataFrame
    split: str


def read_vqa(dataset: str, *, data_root: str | Path, split: SplitMode = "auto", seed: int = 0,
             image_column: str = "image", question_column: str = "question", answer_column: str = "answer",
             max_rows: int = 0) -> VQARecords:
    """Read a VQA dataset by name (vqa_rad, slake, pathvqa), path or `hf:` name and split it; see the module docstring.

    `max_rows` > 0 keeps the first rows of each split in a seeded image order (whole images
    first, so few images are decoded): for smoke tests and quick looks, never for results.
    """
    columns = (image_column, question_column, answer_column)
    if is_hf(dataset):
        hub = load_hub(dataset, data_root, SPLITS, dict(zip(columns, ("image_column", "question_column", "answer_column"))),
                       optional=("answer_type", *META_COLUMNS))
        kind, path, name = "table", hub.source, hub.name
        rows, official = _table_rows(hub.rows, dataset, *columns), hub.split or "the dataset's own split"
    else:
        kind, path = locate_source(dataset.strip(), Path(data_root).expanduser())
        name = kind if kind != "table" else path.stem
        if kind == "vqa_rad":
            rows, official = _vqa_rad_rows(path), "phrase_type test_* = test"
        elif kind == "slake":
            rows, official = _slake_rows(path), "SLAKE train/validation/test files (English)"
        else:
            rows, official = _table_rows(read_tables(path)[0], path, *columns), "the table's own split"
    rows, how = _assign_splits(rows, kind, split, seed, official, path)
    rows = _seeded_image_order(rows, seed)
    if max_rows:
        rows = rows.groupby("split", sort=False).head(max_rows).reset_index(drop=True)
        how += f"; first {max_rows} rows per split (max_rows)"
    for name in SPLITS:
        if not (rows["split"] == name).any():
            raise DataError(f"split '{name}' of {path} is empty ({how}); add data or use another split mode")
    return VQARecords(name, path, rows, how)


def load_vqa(dataset: str, *, data_root: str | Path, image_size: int, split: SplitMode = "auto", seed: int = 0,
             image_column: str = "image", question_column: str = "question", answer_column: str = "answer",
             max_rows: int = 0, pad: tuple[int, int, int] | None = None) -> VQAData:
    """`read_vqa`, then every distinct image decoded once at `image_size` (padded to square with `pad`, see `load_image`).

    Images are stored in a canonical (sorted) order, so the seed changes the split but not the
    image tensor: cached encoder features are reused across seeds.
    """
    records = read_vqa(dataset, data_root=data_root, split=split, seed=seed, image_column=image_column,
                       question_column=question_column, answer_column=answer_column, max_rows=max_rows)
    rows = records.rows
    keys = sorted(set(rows["image_key"]))
    first = rows.drop_duplicates("image_key").set_index("image_key")["image_source"]
    images = _decode_all([first[k] for k in keys], image_size, records.source, pad)
    rows = rows.assign(image_index=rows["image_key"].map({k: i for i, k in enumerate(keys)}).astype(np.int64))
    columns = ["image_index", "image_name", "question", "answer", "closed", *[c for c in META_COLUMNS if c in rows]]
    splits = {name: rows[rows["split"] == name][columns].reset_index(drop=True) for name in SPLITS}
    return VQAData(name=records.name, source=str(records.source), images=images, splits=splits,
                   split=records.split, digest=_digest(splits, keys))


# -- locating -----------------------------------------------------------------------------


def locate_source(name: str, data_root: Path) -> tuple[str, Path]:
    """(kind, path): kind is vqa_rad, slake or table."""
    key = name.lower().replace("-", "_")
    if key in ALIASES:
        folder = locate(name, data_root, ALIASES[key])
        if folder is None:
            tried = ", ".join(f"{p}/" for p in candidates(name, data_root, ALIASES[key]))
            raise DataError(f"{name} not found: tried {tried}; in {Path(data_root) / ALIASES[key][0]}/: {HOW_TO_GET[key]}; "
                            f"or set data_root / MEDVLM_DATA to the folder that holds {ALIASES[key][0]}/, or pass dataset=PATH")
        return (key if key != "pathvqa" else "table"), folder
    return source_kind(
        name, data_root, _vqa_layout,
        f"VQA data: expected '{VQA_RAD_JSON}' (VQA-RAD), train.json (SLAKE) or parquet/CSV files with image, "
        f"question, answer columns",
        f"unknown VQA dataset '{name}': use vqa_rad, slake, pathvqa (folders under data_root {data_root}), a folder "
        f"in one of those layouts, or a parquet/CSV file with image, question, answer columns")


def _vqa_layout(folder: Path) -> str | None:
    if (folder / VQA_RAD_JSON).is_file():
        return "vqa_rad"
    return "slake" if (folder / "train.json").is_file() else None


# -- readers: each returns one row per QA with image_key/image_source/image_name/split -------


def _read_json(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({str(exc).splitlines()[0]}); restore the original JSON file") from None
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a JSON list of QA records")
    return records


def _require_fields(records: pd.DataFrame, fields: tuple[str, ...], where: pd.Series | Path) -> None:
    """Every record has each field, non-null and non-blank; else one line naming the file and the record.

    Left alone, pandas fills a missing field with NaN, which becomes the text "nan" (and null becomes
    ""): silently wrong questions and answers.
    """
    for field in fields:
        values = records[field] if field in records else pd.Series(None, index=records.index, dtype=object)
        blank = values.isna() | values.map(lambda v: isinstance(v, str) and not v.strip())
        if blank.any():
            row = int(np.argmax(blank.to_numpy()))
            file = where.iloc[row] if isinstance(where, pd.Series) else where
            index = records["_record"].iloc[row] if "_record" in records else row
            raise DataError(f"{file}: record {index} has no '{field}' (missing, null or empty; {int(blank.sum())} "
                            f"such record(s)); fix or remove those records")


def _answer_text(value) -> str:
    return ("" if value is None else str(value)).strip()


def _closed_from(answer_type: pd.Series | None, answers: pd.Series, path: Path) -> pd.Series:
    """`answer_type` CLOSED/OPEN (whitespace and case ignored) or, without it, yes/no answers are closed."""
    if answer_type is None:
        return answers.map(is_yes_no)
    kind = answer_type.astype(str).str.strip().str.upper()
    odd = sorted(set(kind) - {"CLOSED", "OPEN"})
    if odd:
        raise DataError(f"answer_type in {path} holds {odd[:5]}; expected CLOSED or OPEN")
    return kind == "CLOSED"


def _question_type(value) -> str:
    """'POS, PRES' and 'PRES, POS' are one type; 'Other' is 'OTHER'."""
    parts = sorted({p.strip().upper() for p in str(value).split(",") if p.strip()})
    return "+".join(parts) or "NONE"


def _vqa_rad_rows(folder: Path) -> pd.DataFrame:
    records = pd.DataFrame(_read_json(folder / VQA_RAD_JSON))
    missing = {"image_name", "question", "answer", "answer_type", "phrase_type"} - set(records.columns)
    if missing:
        raise DataError(f"{folder / VQA_RAD_JSON} lacks fields {sorted(missing)}; use the original OSF release file")
    _require_fields(records, ("image_name", "question", "answer", "answer_type", "phrase_type"), folder / VQA_RAD_JSON)
    image_dir = folder / VQA_RAD_IMAGES
    paths = records["image_name"].map(lambda n: str(image_dir / n))
    _require_files(paths, folder, "vqa_rad")
    answers = records["answer"].map(_answer_text)
    return pd.DataFrame({
        "image_key": paths, "image_source": paths, "image_name": records["image_name"],
        "question": records["question"].map(_answer_text), "answer": answers,
        "closed": _closed_from(records["answer_type"], answers, folder / VQA_RAD_JSON),
        "question_type": records.get("question_type", pd.Series("NONE", index=records.index)).map(_question_type),
        "organ": records.get("image_organ", pd.Series("", index=records.index)).astype(str).str.strip().str.upper(),
        "split": np.where(records["phrase_type"].astype(str).str.startswith("test"), "test", "train"),
    })


def _slake_rows(folder: Path) -> pd.DataFrame:
    val_file = next((folder / f for f in SLAKE_VAL_FILES if (folder / f).is_file()), None)
    if not (folder / "test.json").is_file() or val_file is None:
        raise DataError(f"SLAKE folder {folder} needs train.json, validation.json (or validate.json) and test.json; "
                        f"{HOW_TO_GET['slake']}")
    parts = []
    for split, file in (("train", folder / "train.json"), ("val", val_file), ("test", folder / "test.json")):
        frame = pd.DataFrame(_read_json(file))
        if "q_lang" in frame:
            frame = frame[frame["q_lang"] == "en"]
        parts.append(frame.assign(split=split, source_file=str(file), _record=frame.index))
    records = pd.concat(parts, ignore_index=True)
    _require_fields(records, ("img_name", "question", "answer"), records["source_file"])
    paths = records["img_name"].map(lambda n: str(folder / "imgs" / n))
    _require_files(paths, folder, "slake")
    answers = records["answer"].map(_answer_text)
    return pd.DataFrame({
        "image_key": paths, "image_source": paths, "image_name": records["img_name"],
        "question": records["question"].map(_answer_text), "answer": answers,
        "closed": _closed_from(records.get("answer_type"), answers, folder),
        "content_type": _text_column(records, "content_type"), "modality": _text_column(records, "modality"),
        "organ": _text_column(records, "location"), "split": records["split"],
    })


def _text_column(records: pd.DataFrame, name: str) -> pd.Series:
    if name not in records:
        return pd.Series("", index=records.index)
    return records[name].astype(str).str.strip()


def _table_rows(table: pd.DataFrame, path: str | Path, image_column: str, question_column: str,
                answer_column: str) -> pd.DataFrame:
    missing = [c for c in (image_column, question_column, answer_column) if c not in table.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in {path}; its columns are {list(table.columns)[:12]}: "
                        f"a VQA table needs an image, a question and an answer column (set image_column, "
                        f"question_column, answer_column)")
    _require_fields(table, (image_column, question_column, answer_column), Path(path))
    keys, sources, names = zip(*(image_ref(v, Path(folder)) for v, folder in zip(table[image_column], table["_folder"])))
    answers = table[answer_column].map(_answer_text)
    out = pd.DataFrame({
        "image_key": keys, "image_source": sources, "image_name": names,
        "question": table[question_column].map(_answer_text), "answer": answers,
        "closed": _closed_from(table.get("answer_type"), answers, Path(path)),
        "split": split_values(table["split"], Path(path)) if "split" in table.columns else None,
    })
    for c in META_COLUMNS:
        if c in table.columns:
            out[c] = _text_column(table, c)
    _require_files(out["image_source"][out["image_source"].map(lambda s: isinstance(s, str))], Path(path), None)
    return out


def _require_files(paths: pd.Series, where: Path, kind: str | None) -> None:
    missing = sorted({p for p in paths.unique() if not Path(p).is_file()})
    if missing:
        fix = HOW_TO_GET[kind] if kind else "image paths are read relative to the table's folder"
        raise DataError(f"{len(missing)} image(s) referenced under {where} are missing, e.g. {missing[0]}; {fix}")


# -- splitting ----------------------------------------------------------------------------


def _assign_splits(rows: pd.DataFrame, kind: str, mode: SplitMode, seed: int, official: str,
                   path: str | Path) -> tuple[pd.DataFrame, str]:
    if mode not in ("auto", "image", "official"):
        raise ConfigError(f"split={mode} is not one of auto, image, official")
    given = bool(rows["split"].notna().all())
    if mode == "official" and not given:
        raise ConfigError(f"split=official: {path} has no split of its own (no train/val/test file names or "
                          f"'split' column); use split=image")
    by_image = mode == "image" or (mode == "auto" and (kind == "vqa_rad" or not given))
    rows = rows.copy()
    if by_image:
        sets = image_split(rows["image_key"].to_numpy(), seed)
        rows["split"] = rows["image_key"].map({k: s for s, keys in sets.items() for k in keys})
        how = f"image-based (seed {seed}): {len(sets['train'])}/{len(sets['val'])}/{len(sets['test'])} images"
    else:
        how = official
        if not (rows["split"] == "val").any():
            train = rows["split"] == "train"
            val_keys = image_split(rows.loc[train, "image_key"].to_numpy(), seed, test_fraction=0.0)["val"]
            rows.loc[train & rows["image_key"].isin(val_keys), "split"] = "val"
            how += f"; val = {len(val_keys)} training images (seed {seed})"
    return rows, how


def _seeded_image_order(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Rows grouped by image, images in a seeded order, rows of one image in source order."""
    keys = np.array(sorted(set(rows["image_key"])), dtype=object)
    rank = dict(zip(keys[np.random.default_rng(seed + 1).permutation(len(keys))], range(len(keys))))
    order = np.lexsort((np.arange(len(rows)), rows["image_key"].map(rank).to_numpy()))
    return rows.iloc[order].reset_index(drop=True)


# -- images -------------------------------------------------------------------------------


def _decode_all(sources: list[str | bytes], image_size: int, where: str | Path,
                pad: tuple[int, int, int] | None = None) -> torch.Tensor:
    """uint8 [M, 3, S, S]; decoding runs in threads (PIL releases the GIL while decoding)."""
    if not sources:
        raise DataError(f"no images referenced in {where}")
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return torch.stack(list(pool.map(lambda s: decode_image(s, image_size, pad), sources)))


def _digest(splits: dict[str, pd.DataFrame], keys: list[str]) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        frame = splits[name]
        h.update(name.encode())
        h.update(frame[["image_index", "question", "answer", "closed"]].to_json(orient="values").encode())
    h.update("\n".join(content_keys(keys)).encode())
    return h.hexdigest()[:16]
