"""A trained LLaVA-family adapter as an MLflow model that answers questions about images by generation.

Artifacts: `medvlm.json` (base model argument, weights pin, strategy, decoding length), plus
either the peft LoRA adapter (`lora`) or the projector weights (`mlp`, safetensors). Loading
rebuilds the base model through the zoo, refuses base weights whose digest differs from the
pin, applies the adapter, and generates greedily with the base model's own chat template.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec
from safetensors.torch import load_file

from medvlm.adapters.base import (EXAMPLE_QUESTION, QUESTION_INPUTS, Adapter, ServedModel, check_pin, example_png,
                                  read_meta, serving_signature)
from medvlm.catalog import STRATEGY_KINDS
from medvlm.config import RunConfig
from medvlm.data.sources import decode_image
from medvlm.errors import ModelError
from medvlm.strategies.lora import load_adapter
from medvlm.tasks.generative_vqa import answer_all, build_prompts
from medvlm.zoo.factory import load_vlm
from medvlm.zoo.llava import PROJECTOR, GenerativeVLM


class GenerativeVQAModel(ServedModel):
    """Input: a DataFrame with `image` (encoded bytes or a file path) and `question`. Output: `answer` per row."""

    def load_context(self, context) -> None:
        self.meta = read_meta(context)
        vlm = load_vlm(self.meta["model"])
        check_pin(self.meta, vlm.spec.pin)
        if "adapter" in context.artifacts:
            vlm.net = load_adapter(vlm.net, context.artifacts["adapter"])
        if "projector" in context.artifacts:
            vlm.llava.get_submodule(PROJECTOR).load_state_dict(load_file(context.artifacts["projector"]))
        self.vlm = vlm.eval()

    def serving(self, meta: dict[str, Any]) -> tuple[ModelSignature, pd.DataFrame]:
        return (serving_signature(QUESTION_INPUTS, [ColSpec("string", "answer")], batch_size=8,
                                  max_new_tokens=meta["max_new_tokens"]),
                pd.DataFrame({"image": [example_png()], "question": [EXAMPLE_QUESTION]}))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or not {"image", "question"} <= set(model_input.columns):
            raise ModelError("VQA input must be a DataFrame with columns 'image' (bytes or path) and 'question'")
        size = self.vlm.preprocess.image_size
        images = torch.stack([decode_image(v, size, self.vlm.pad) for v in model_input["image"]])
        table = build_prompts(self.vlm, [str(q) for q in model_input["question"]])
        params = params or {}
        answers = answer_all(self.vlm, images, torch.arange(len(images)), table,
                             int(params.get("max_new_tokens", self.meta["max_new_tokens"])),
                             int(params.get("batch_size", 8)))
        return pd.DataFrame({"answer": answers})


def adapter(cfg: RunConfig, vlm: GenerativeVLM) -> Adapter:
    """The LoRA adapter (`lora`) or the trained projector (`mlp`), registered as `medvlm-<model>-<dataset>-vqa`."""
    lora = STRATEGY_KINDS[cfg.strategy].adds_lora
    heads = {} if lora else {"projector": vlm.llava.get_submodule(PROJECTOR)}
    return Adapter(GenerativeVQAModel(), vlm.spec.pin, vlm.net if lora else None, heads,
                   {"strategy": cfg.strategy, "lora_parts": cfg.lora_parts or "l", "max_new_tokens": cfg.max_new_tokens,
                    "generative": True})
