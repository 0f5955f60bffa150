"""A logged VQA LoRA adapter as an MLflow model that answers questions about images.

Artifacts as every adapter (`medvlm.adapters.base`): the peft adapter, the BAN head
(safetensors) and `medvlm.json`, which here also holds the head's shape and the answer
vocabulary. Images are preprocessed exactly as in training (`decode_image`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec
from safetensors.torch import load_file

from medvlm.adapters.base import EXAMPLE_QUESTION, QUESTION_INPUTS, AdapterModel, example_png, serving_signature
from medvlm.data.sources import decode_image
from medvlm.errors import ModelError
from medvlm.tasks.vqa import AnswerVocab, BANHead, VQAModel


class VQAAdapterModel(AdapterModel):
    """Input: a DataFrame with `image` (encoded bytes or a file path) and `question`.
    Output: one row per question with the `answer` and its softmax `score`."""

    def load_context(self, context) -> None:
        self.load_base(context)
        head = BANHead(**self.meta["head"])
        head.load_state_dict(load_file(context.artifacts["head"]))
        self.model = VQAModel(self.clip, head).eval()
        self.vocab = AnswerVocab(**self.meta["vocab"])

    def serving(self, meta: dict[str, Any]) -> tuple[ModelSignature, pd.DataFrame]:
        return (serving_signature(QUESTION_INPUTS, [ColSpec("string", "answer"), ColSpec("double", "score")], batch_size=64),
                pd.DataFrame({"image": [example_png()], "question": [EXAMPLE_QUESTION]}))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or not {"image", "question"} <= set(model_input.columns):
            raise ModelError("VQA input must be a DataFrame with columns 'image' (bytes or path) and 'question'")
        size = self.clip.preprocess.image_size
        images = torch.stack([decode_image(v, size) for v in model_input["image"]])
        tokens = self.clip.tokenize([str(q) for q in model_input["question"]])
        batch = int((params or {}).get("batch_size", 64))
        with torch.no_grad():
            logits = torch.cat([
                self.model({"images": images[i:i + batch], "input_ids": tokens.input_ids[i:i + batch],
                            "attention_mask": tokens.attention_mask[i:i + batch]})
                for i in range(0, len(images), batch)])
        scores, index = logits.softmax(dim=-1).max(dim=-1)
        return pd.DataFrame({"answer": self.vocab.decode(index.tolist()), "score": scores.numpy()})
