"""Batch preprocessing on the device: uint8 images at any stored size -> the model's input."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvlm.zoo.base import Preprocess


def to_model_input(images: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 [B,C,H,W] -> float [B,channels,S,S], normalised with the model's mean/std.

    Grayscale is repeated to 3 channels (or RGB averaged to 1 for grayscale models), then
    resized to the model's size in one batched, antialiased interpolation.
    """
    x = images.float()
    if x.shape[1] == 1 and pre.channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and pre.channels == 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (pre.image_size, pre.image_size):
        x = F.interpolate(x, size=(pre.image_size, pre.image_size), mode=pre.interpolation,
                          align_corners=False, antialias=True).clamp_(0, 255)
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x / 255.0 - mean) / std
