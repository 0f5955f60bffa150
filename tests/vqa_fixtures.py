"""Small VQA datasets in their native on-disk layouts, with generated images, for offline tests.

- VQA-RAD: `VQA_RAD Dataset Public.json` (the OSF release's fields and quirks: an "CLOSED "
  answer_type with a trailing space, integer answers) + `VQA_RAD Image Folder/*.jpg`.
- SLAKE: train.json / validate.json (or validation.json) / test.json + imgs/xmlab<N>/source.jpg,
  English and Chinese rows, as the Slake1.0 release.
- A Hugging Face-style parquet folder (data/<split>-00000-of-00001.parquet) whose image column
  holds {"bytes", "path"} structs, as `datasets` writes Image features.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

QUESTIONS = [
    ("Is there a fracture?", "yes", "CLOSED", "PRES"),
    ("Is the heart enlarged?", "no", "CLOSED", "SIZE"),
    ("Which organ is shown?", "left kidney", "OPEN", "ORGAN"),
    ("How many lesions are there?", 2, "OPEN", "COUNT"),
    ("Is this on the left or the right?", "right", "CLOSED ", "POS, PRES"),
]


def _jpeg(rng: np.random.Generator, size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def write_vqa_rad(folder: Path, n_images: int = 10, seed: int = 0) -> Path:
    """Every image gets all five QUESTIONS; images 0-1 are the official test set."""
    rng = np.random.default_rng(seed)
    images = folder / "VQA_RAD Image Folder"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_images):
        name = f"synpic{1000 + i}.jpg"
        (images / name).write_bytes(_jpeg(rng))
        for question, answer, answer_type, qtype in QUESTIONS:
            records.append({"qid": len(records), "phrase_type": "test_freeform" if i < 2 else "freeform",
                            "image_name": name, "image_organ": ["CHEST", "ABD", "HEAD"][i % 3], "question": question,
                            "question_type": qtype, "answer": answer, "answer_type": answer_type,
                            "evaluation": "given", "question_rephrase": "NULL"})
    (folder / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))
    return folder


SLAKE_QA = [
    ("Which organ is abnormal?", "Lung", "OPEN", "Organ"),
    ("Does the picture contain liver?", "Yes", "CLOSED", "Organ"),
    ("What modality is used to take this image?", "CT", "OPEN", "Modality"),
]


def write_slake(folder: Path, images_per_split: dict[str, int] | None = None, val_file: str = "validate.json",
                seed: int = 0) -> Path:
    """Disjoint images per split, three English and one Chinese question per image."""
    rng = np.random.default_rng(seed)
    counts = images_per_split or {"train": 6, "val": 2, "test": 2}
    files = {"train": "train.json", "val": val_file, "test": "test.json"}
    img_id = 0
    for split, n in counts.items():
        records = []
        for _ in range(n):
            name = f"xmlab{img_id}/source.jpg"
            (folder / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / "imgs" / name).write_bytes(_jpeg(rng))
            common = {"img_id": img_id, "img_name": name, "location": "Lung", "modality": "CT", "base_type": "vqa",
                      "triple": ["vhead", "_", "_"]}
            for question, answer, answer_type, content in SLAKE_QA:
                records.append({**common, "qid": len(records), "question": question, "answer": answer, "q_lang": "en",
                                "answer_type": answer_type, "content_type": content})
            records.append({**common, "qid": len(records), "question": "图中哪个器官异常?", "answer": "肺", "q_lang": "zh",
                            "answer_type": "OPEN", "content_type": "Organ"})
            img_id += 1
        (folder / files[split]).write_text(json.dumps(records, ensure_ascii=False))
    return folder


def write_vqa_parquet(folder: Path, splits: dict[str, int] | None = None, seed: int = 0) -> Path:
    """data/<split>-00000-of-00001.parquet with image structs; no answer_type column (closed = yes/no)."""
    rng = np.random.default_rng(seed)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, n in (splits or {"train": 6, "validation": 2, "test": 2}).items():
        rows = []
        for i in range(n):
            data = _jpeg(rng)
            for question, answer in (("is there a mass?", "yes"), ("what stain is used?", "h&e"), ("is it benign?", "no")):
                rows.append({"image": {"bytes": data, "path": f"{split}_{i}.jpg"}, "question": question, "answer": answer})
        pd.DataFrame(rows).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder
