"""open_clip backend: built-in names with pretrained tags, `hf-hub:` ids and `local-dir:` folders."""

from __future__ import annotations

import torch

from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch


class OpenClipModel(ClipModel):
    """Adapts an `open_clip` CLIP/CustomTextCLIP model to `ClipModel`."""

    def __init__(self, net: torch.nn.Module, tokenizer, spec: ModelSpec):
        cfg = net.visual.preprocess_cfg
        size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
        preprocess = Preprocess(
            image_size=int(size),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            interpolation="bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic",
        )
        embed_dim = int(getattr(net, "embed_dim", 0) or net.visual.output_dim)
        super().__init__(spec, preprocess, embed_dim)
        self.net = net
        self.tokenizer = tokenizer
        self.spec.context_length = int(tokenizer.context_length)

    def _pad_id(self) -> int:
        hf = getattr(self.tokenizer, "tokenizer", None)
        return int(hf.pad_token_id) if hf is not None and hf.pad_token_id is not None else 0

    def _token_counts(self, texts: list[str]) -> list[int]:
        hf = getattr(self.tokenizer, "tokenizer", None)
        if hf is not None:
            return [len(ids) for ids in hf(texts, add_special_tokens=True)["input_ids"]]
        return [len(self.tokenizer.encode(t)) + 2 for t in texts]

    def tokenize(self, texts: list[str]) -> TextBatch:
        ids = self.tokenizer(list(texts))
        truncated = sum(n > self.spec.context_length for n in self._token_counts(list(texts)))
        return TextBatch(ids, ids != self._pad_id(), truncated)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(pixels)

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        return self.net.encode_text(text.input_ids)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.net.forward_intermediates(
            image=pixels, image_indices=1, intermediates_only=True,
            normalize_intermediates=True, image_output_fmt="NLC",
        )
        return out["image_intermediates"][-1]

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net.forward_intermediates(
            text=text.input_ids, text_indices=1, intermediates_only=True, normalize_intermediates=True,
        )
        return out["text_intermediates"][-1], text.attention_mask

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp()

    def logit_bias(self) -> torch.Tensor | None:
        return getattr(self.net, "logit_bias", None)
