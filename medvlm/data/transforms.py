"""Batch preprocessing on the device: uint8 images at any stored size -> the model's input."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from medvlm.zoo.base import Preprocess


@lru_cache(maxsize=16)
def _affine(pre: Preprocess, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with x * scale + shift == (x / 255 - mean) / std, made once per device.

    Building them per batch with `torch.tensor(..., device=cuda)` was a blocking copy, i.e. a host
    synchronisation, in every training step.
    """
    mean, std = torch.tensor(pre.mean, dtype=torch.float64), torch.tensor(pre.std, dtype=torch.float64)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    return (scale.float().view(1, -1, 1, 1).to(device), shift.float().view(1, -1, 1, 1).to(device))


def to_model_input(images: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 [B,C,H,W] -> float [B,channels,S,S], normalised with the model's mean/std.

    RGB is averaged to 1 channel for grayscale models, resized to the model's size in one
    batched, antialiased interpolation (grayscale before it is repeated to 3 channels, so it
    is resized once, not three times), then normalised in one fused multiply-add.
    """
    x = images.float()
    if x.shape[1] == 3 and pre.channels == 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (pre.image_size, pre.image_size):
        x = F.interpolate(x, size=(pre.image_size, pre.image_size), mode=pre.interpolation,
                          align_corners=False, antialias=True).clamp_(0, 255)
    if x.shape[1] == 1 and pre.channels == 3:
        x = x.expand(-1, 3, -1, -1)
    scale, shift = _affine(pre, x.device)
    return torch.addcmul(shift, x, scale)
