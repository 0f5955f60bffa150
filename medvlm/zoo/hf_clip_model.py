"""transformers backend: `CLIPModel` from a hub id or a `save_pretrained` folder (PubMedCLIP, PLIP, ...)."""

from __future__ import annotations

from pathlib import Path

import torch

from medvlm.errors import ModelError
from medvlm.network import clipped
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import HF_CLIP_BLOCK, weights_digest
from medvlm.zoo.hf_parts import preprocess_from

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class HFClipModel(ClipModel):
    """Adapts `transformers.CLIPModel` to `ClipModel`."""

    def __init__(self, net, tokenizer, spec: ModelSpec, preprocess: Preprocess):
        super().__init__(spec, preprocess, int(net.config.projection_dim))
        self.net = net
        self.tokenizer = tokenizer
        spec.context_length = int(net.config.text_config.max_position_embeddings)

    def tokenize(self, texts: list[str]) -> TextBatch:
        full = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.spec.context_length, return_tensors="pt")
        truncated = sum(len(ids) > self.spec.context_length for ids in full)
        return TextBatch(enc["input_ids"], enc["attention_mask"].bool(), truncated)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.visual_projection(self.net.vision_model(pixel_values=pixels).pooler_output)

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        out = self.net.text_model(input_ids=text.input_ids, attention_mask=text.attention_mask.long())
        return self.net.text_projection(out.pooler_output)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the last layer (class token excluded), `post_layernorm`-ed and projected: [B, N, D].

        Same semantics as the open_clip backend: the pooled image embedding is the class
        token through these two maps, so the grid lives in the joint embedding space.
        """
        hidden = self.net.vision_model(pixel_values=pixels).last_hidden_state
        return self.net.visual_projection(self.net.vision_model.post_layernorm(hidden[:, 1:]))

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's final-normed state, projected: ([B, L, D], mask [B, L]); the EOS state is the embedding.

        `L` may be shorter than the context (trailing padding dropped): the tower is causal and
        masks padding, so real tokens get the states of a full-context forward.
        """
        out = self.net.text_model(input_ids=text.input_ids, attention_mask=text.attention_mask.long())
        return self.net.text_projection(out.last_hidden_state), text.attention_mask

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp()


def load_transformers_clip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoTokenizer, CLIPModel

    ident = location or entry["model"]
    try:
        net = CLIPModel.from_pretrained(ident, local_files_only=location is not None)
        tokenizer = AutoTokenizer.from_pretrained(ident, local_files_only=location is not None)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load transformers CLIP model '{spec.name}' from {ident} ({clipped(str(exc), 200)}); "
            f"offline, put a save_pretrained folder (config.json, model.safetensors, tokenizer files) in "
            f"$MEDVLM_WEIGHTS/{spec.name}/ or pass its path"
        ) from None

    spec.partial = spec.partial or ["visual_projection", "text_projection", "logit_scale"]
    spec.lora_vision = spec.lora_vision or HF_CLIP_BLOCK
    spec.lora_text = spec.lora_text or HF_CLIP_BLOCK
    spec.vision_prefix, spec.text_prefix = "vision_model.", "text_model."
    spec.pin = ({"model": str(Path(location).resolve()), "sha256": weights_digest(Path(location))}
                if location else {"model": ident, "revision": getattr(net.config, "_commit_hash", None)})
    return HFClipModel(net.float(), tokenizer, spec, preprocess_from(
        ident, int(net.config.vision_config.image_size), OPENAI_MEAN, OPENAI_STD))
