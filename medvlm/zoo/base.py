"""The one interface every CLIP-style model in the zoo implements.

Tasks and strategies talk only to `ClipModel`; backends (open_clip, transformers, the
authors' custom checkpoints) adapt their model to it. Parameter names seen by the
strategies are the backend module's names under the attribute `net`, so a zoo entry's
`partial` and `lora` lists read like the checkpoint's own keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Domain = Literal["general", "medical", "unknown"]


@dataclass(frozen=True)
class Preprocess:
    """What the pixels must look like when they reach the image encoder."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"


@dataclass
class ModelSpec:
    """A zoo entry, resolved: what the model is and which parts each strategy touches."""

    name: str
    source: str
    domain: Domain = "unknown"
    modality: str = "unknown"
    pretraining: str = ""
    licence: str = "unknown"
    context_length: int = 77
    partial: list[str] = field(default_factory=list)
    lora_vision: list[str] = field(default_factory=list)
    lora_text: list[str] = field(default_factory=list)
    vision_prefix: str = "visual."
    text_prefix: str = "transformer."
    pin: dict = field(default_factory=dict)
    lora_parts: dict[str, dict] = field(default_factory=dict)
    """Generative models: LoRA part letter (v, l, m) -> {"prefix": module path, "targets": name suffixes}."""


@dataclass
class TextBatch:
    """Tokenised text: ids, the mask of real tokens, and how many texts were cut short."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: int = 0

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device), self.truncated)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> TextBatch:
        return TextBatch(self.input_ids[index], self.attention_mask[index], 0)


class ClipModel(nn.Module):
    """Image and text towers with a shared embedding space.

    `net` is the backend model; `spec` and `preprocess` describe it. Embeddings are
    returned unnormalised; callers normalise where the method says so.
    """

    net: nn.Module

    def __init__(self, spec: ModelSpec, preprocess: Preprocess, embed_dim: int):
        super().__init__()
        self.spec = spec
        self.preprocess = preprocess
        self.embed_dim = embed_dim

    def tokenize(self, texts: list[str]) -> TextBatch:
        raise NotImplementedError

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        raise NotImplementedError

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image token grid [B, N, C]: ViT patch tokens or CNN feature-map cells (for VQA)."""
        raise NotImplementedError

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token text states [B, L, C] and the mask of real tokens [B, L] (for VQA)."""
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, exponentiated: logits = logit_scale * cos."""
        raise NotImplementedError

    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP-style additive bias; None for softmax-CLIP models."""
        return None
