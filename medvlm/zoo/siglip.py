"""SigLIP-family models (MedSigLIP) through transformers `SiglipModel`: sigmoid logits with a learned bias.

Embeddings: image = the vision tower's attention-pooling (MAP) head output, text = the final
state of the LAST position (the model pads to `max_position_embeddings`, 64, and pools there,
as it was trained) through the text `head`. Logits are `logit_scale.exp() * cos + logit_bias`
and P(image matches text) = sigmoid(logit): SigLIP scores each pair on its own.

What that means for the tasks (the bias is returned by `logit_bias()`):
- ranking (retrieval recall@k, argmax, per-class AUC) depends on cos only: scale and bias
  are monotone and shared, so retrieval needs no change;
- single-label zero-shot (multi-class AND binary): softmax over `logit_scale * cos`. The
  bias cancels in a softmax, so this is exact for "which class"; for two classes it equals
  sigmoid(s * (cos_1 - cos_0)), so thresholding at 0.5 is the argmax. Do NOT use the per-class
  sigmoid(s * cos + b) there: with SigLIP's large negative bias every class scores far below
  0.5 and the binary 0.5 threshold predicts class 0 for every image;
- multi-label zero-shot (independent findings): sigmoid(s * cos_pos + b) is SigLIP's own
  calibrated per-label probability, i.e. a head with weight s * class_embedding and bias b,
  no negated prompts needed (the positive-vs-negated softmax stays valid, the bias cancels).
"""

from __future__ import annotations

from pathlib import Path

import torch

from medvlm.errors import ModelError
from medvlm.network import clipped
from medvlm.zoo import hf_parts
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import HF_CLIP_BLOCK, weights_digest


class SiglipClipModel(hf_parts.TokenizerClipModel):
    def __init__(self, net, tokenizer, spec: ModelSpec, preprocess: Preprocess):
        super().__init__(net, tokenizer, spec, preprocess, net.text_model.head.out_features)
        # The processor hands the model an attention mask only if its tokenizer produces one.
        self.pass_mask = "attention_mask" in getattr(tokenizer, "model_input_names", [])

    def _text(self, text: TextBatch):
        """The text tower on full-length ids (it pools the last position; without a mask padding is attended)."""
        text = hf_parts.full_context(text, self.spec.context_length, self.tokenizer.pad_token_id)
        mask = text.attention_mask.long() if self.pass_mask else None
        return self.net.text_model(input_ids=text.input_ids, attention_mask=mask)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.vision_model(pixel_values=pixels).pooler_output

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        return self._text(text).pooler_output

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the vision tower's final norm: [B, N, C] (SigLIP has no class token)."""
        return self.net.vision_model(pixel_values=pixels).last_hidden_state

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-normed token states through the text `head`; the last position's is the embedding.

        Ids cut short by a caller get the states of the full 64-token forward.
        """
        n = text.input_ids.shape[1]
        return self.net.text_model.head(self._text(text).last_hidden_state[:, :n]), text.attention_mask

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp()

    def logit_bias(self) -> torch.Tensor:
        return self.net.logit_bias


def load_siglip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoTokenizer, SiglipModel

    ident = location or entry["model"]
    try:
        net = SiglipModel.from_pretrained(ident, local_files_only=location is not None)
        tokenizer = AutoTokenizer.from_pretrained(ident, local_files_only=location is not None)
    except (OSError, ValueError, ImportError) as exc:
        gated = " (a gated repository: accept its terms on the Hub and log in first)" if entry.get("gated") else ""
        raise ModelError(f"cannot load SigLIP model '{spec.name}' from {ident}{gated} "
                         f"({clipped(str(exc), 160)}); offline, put its save_pretrained folder in "
                         f"$MEDVLM_WEIGHTS/{spec.name}/") from None
    spec.context_length = int(net.config.text_config.max_position_embeddings)
    spec.lora_vision = spec.lora_vision or HF_CLIP_BLOCK
    spec.lora_text = spec.lora_text or HF_CLIP_BLOCK
    spec.pin = ({"model": str(Path(location).resolve()), "sha256": weights_digest(Path(location))}
                if location else {"model": ident, "revision": getattr(net.config, "_commit_hash", None)})
    preprocess = hf_parts.preprocess_from(ident, int(net.config.vision_config.image_size),
                                          tuple(entry["mean"]), tuple(entry["std"]), resample=2)
    return SiglipClipModel(net.float().eval(), tokenizer, spec, preprocess)
