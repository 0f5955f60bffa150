"""The model zoo: one `ClipModel` interface over open_clip, transformers and custom checkpoints.

Names are resolved on first use (PEP 562) so that `medvlm --help` and `medvlm models`, which
only read the zoo's JSON entries, never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
    from medvlm.zoo.entries import list_models, zoo_entries
    from medvlm.zoo.factory import create_model

_HOMES = {"ClipModel": "base", "ModelSpec": "base", "Preprocess": "base", "TextBatch": "base",
          "create_model": "factory", "list_models": "entries", "zoo_entries": "entries"}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'medvlm.zoo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medvlm.zoo.{_HOMES[name]}"), name)
