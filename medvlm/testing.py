"""Tiny models in the real on-disk formats, for offline tests, benchmarks and demos.

Random weights: they exercise the real loading code and the mechanics, never science.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def save_tiny_open_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write an open_clip `local-dir:` folder: open_clip_config.json + open_clip_model.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(TINY_OPEN_CLIP_CFG))
    cfg["vision_cfg"]["image_size"] = image_size
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": {"size": image_size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
