"""The model zoo: one `ClipModel` interface over open_clip, transformers and custom checkpoints."""

from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.factory import create_model, list_models, zoo_entries

__all__ = ["ClipModel", "ModelSpec", "Preprocess", "TextBatch", "create_model", "list_models", "zoo_entries"]
