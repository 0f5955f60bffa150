"""Small image-caption datasets in their native on-disk layouts, with generated images, for offline tests,
and where the real ROCO test sample lies.

- ROCO: `{train,validation,test}/{radiology,non-radiology}/captions.txt` (`ROCO_xxxxx<TAB> caption`,
  with the leading space of the real files) + `images/ROCO_xxxxx.jpg`; some caption rows have no image
  file (as after a partial `fetch.py`), and one caption of test/radiology repeats on a second image.
- A Hugging Face-style parquet folder (`data/<split>-00000-of-00001.parquet`) with image structs
  `{"bytes", "path"}` and `caption`, as `datasets` writes the ROCO-radiology dataset.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA

WORDS = ("axial ct chest mri abdomen liver lesion mass nodule left right contrast coronal sagittal kidney "
         "brain fracture ultrasound arrow shows enhancing cyst lung").split()
ROCO_SIZES = {"train": 10, "validation": 4, "test": 6}
MISSING_PER_FOLDER = 2
ROCO_ROOT = SHARED_DATA / "roco"
needs_roco = pytest.mark.skipif(not (ROCO_ROOT / "test" / "radiology" / "captions.txt").is_file(),
                                reason=f"real ROCO sample not found at {ROCO_ROOT} (../shared/data beside the checkout, "
                                       f"or set MEDVLM_SHARED_DATA)")


def read_roco_captions(path: Path) -> dict[str, str]:
    """An independent parse of ROCO's captions.txt (csv module, tab-separated, no quoting)."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row[0]: row[1].strip() for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}


def jpeg(rng: np.random.Generator, size: tuple[int, int] = (40, 30), gray: bool = False) -> bytes:
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def caption(rng: np.random.Generator, n_words: int = 8) -> str:
    return " ".join(rng.choice(WORDS, size=n_words))


def write_roco(root: Path, sizes: dict[str, int] = ROCO_SIZES, seed: int = 0, validation: bool = True) -> Path:
    """`sizes[split]` images per subset folder plus MISSING_PER_FOLDER caption rows without an image.

    test/radiology: the caption of its first image is repeated on its second (a duplicate caption).
    """
    rng = np.random.default_rng(seed)
    number = 0
    for split, n in sizes.items():
        if split == "validation" and not validation:
            continue
        for subset in ("radiology", "non-radiology"):
            folder = root / split / subset
            (folder / "images").mkdir(parents=True, exist_ok=True)
            lines = []
            for i in range(n + MISSING_PER_FOLDER):
                number += 1
                roco_id = f"ROCO_{number:05d}"
                text = caption(rng)
                if split == "test" and subset == "radiology" and i == 1:
                    text = lines[0].split("\t", 1)[1].strip()
                if i < n:
                    size = (int(rng.integers(32, 64)), int(rng.integers(32, 64)))
                    (folder / "images" / f"{roco_id}.jpg").write_bytes(jpeg(rng, size, gray=i % 3 == 0))
                lines.append(f"{roco_id}\t {text}")
            (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    return root


def write_caption_parquet(folder: Path, sizes: dict[str, int] = ROCO_SIZES, seed: int = 0) -> Path:
    """HF-style `data/<split>-00000-of-00001.parquet` with `image` {bytes, path}, `image_id`, `caption`.

    Every split's last row repeats its first image's bytes with another caption (one image, two captions).
    """
    rng = np.random.default_rng(seed)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        images = [jpeg(rng, (48, 40)) for _ in range(n)]
        rows = [{"image": {"bytes": b, "path": f"{split}_{i}.jpg"}, "image_id": f"{split}_{i}", "caption": caption(rng)}
                for i, b in enumerate(images)]
        rows.append({"image": {"bytes": images[0], "path": f"{split}_0.jpg"}, "image_id": f"{split}_0",
                     "caption": caption(rng, 5)})
        pd.DataFrame(rows).to_parquet(data / f"{split}-00000-of-00001.parquet")
    return folder
