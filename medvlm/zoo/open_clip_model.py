"""open_clip backend: built-in names with pretrained tags, `hf-hub:` ids and `local-dir:` folders."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from medvlm.errors import ModelError
from medvlm.network import clipped
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import BERT_BLOCK, HF_CLIP_BLOCK, OPEN_CLIP_BLOCK, TIMM_BLOCK, open_clip_local_kwargs, weights_digest

PARTIAL_CANDIDATES = ["visual.proj", "visual.head.proj", "visual.attnpool.c_proj", "text_projection",
                      "text.proj", "visual_projection", "logit_scale", "logit_bias"]


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
        # CustomTextCLIP with a timm trunk (BiomedCLIP) has neither `embed_dim` nor `visual.output_dim`.
        embed_dim = int(getattr(net, "embed_dim", 0) or getattr(net.visual, "output_dim", 0) or net.text.output_dim)
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

    def _real_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Mask of real tokens. CLIP's BPE pads with id 0, which is also the token '!', so the mask
        runs up to the end-of-text token (the largest id) instead of comparing with the pad id."""
        if getattr(self.tokenizer, "tokenizer", None) is not None:
            return ids != self._pad_id()
        positions = torch.arange(ids.shape[1], device=ids.device)
        return positions.unsqueeze(0) <= ids.argmax(dim=1, keepdim=True)

    def tokenize(self, texts: list[str]) -> TextBatch:
        ids = self.tokenizer(list(texts))
        truncated = sum(n > self.spec.context_length for n in self._token_counts(list(texts)))
        return TextBatch(ids, self._real_tokens(ids), truncated)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(pixels)

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        return self.net.encode_text(text.input_ids)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Spatial tokens of the last block, final-normed and projected into the joint space: [B, N, D].

        ViT: the patch tokens after `ln_post` (normalize_intermediates), class/prefix tokens
        excluded (they summarise the image; a grid for attention holds locations only), then
        `visual.proj` (timm towers: their tokenwise `head`). CNN (ModifiedResNet): the cells
        of the last feature map through the attention pool's value and output projections
        (MaskCLIP). Going through the projections keeps the tokens in the space the
        embeddings live in, so `partial` (which trains the projections) changes them.
        """
        visual = self.net.visual
        if isinstance(visual, ModifiedResNet):
            cells = visual.forward_intermediates(pixels, indices=1, intermediates_only=True)["image_intermediates"][-1]
            cells = cells.flatten(2).transpose(1, 2)
            pool = visual.attnpool
            return pool.c_proj(pool.v_proj(cells + pool.positional_embedding[1:].to(cells.dtype)))
        tokens = visual.forward_intermediates(pixels, indices=1, intermediates_only=True,
                                              normalize_intermediates=True, output_fmt="NLC")["image_intermediates"][-1]
        return _project(tokens, _image_projection(visual))

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """States of every token of the last block, final-normed and projected: ([B, L, D], mask [B, L]).

        The pooled text embedding is one of these states (CLIP: the EOT token's; BERT towers:
        the CLS token's) before pooling. `L` may be shorter than the context length (callers
        drop trailing padding to save compute): every position gets the state it has in a
        full-context forward. Causal towers never let later (padding) tokens reach earlier
        ones and BERT towers mask padding, so both run on the ids as given; other towers see
        the padding they were trained with. Padded positions hold whatever the tower computed
        there; consumers must use the mask.
        """
        tower = getattr(self.net, "text", None)
        if tower is not None and hasattr(tower, "pooler"):
            states = tower.transformer(input_ids=text.input_ids,
                                       attention_mask=text.attention_mask.long()).last_hidden_state
            return _project(states, tower.proj), text.attention_mask
        tower = self.net if tower is None else tower
        n = text.input_ids.shape[1]
        if tower.attn_mask is not None:
            x = tower.token_embedding(text.input_ids) + tower.positional_embedding[:n]
            states = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[:n, :n]))
        else:
            full = F.pad(text.input_ids, (0, self.spec.context_length - n), value=self._pad_id())
            states = self._full_context_states(full)[:, :n]
        return _project(states, tower.text_projection), text.attention_mask

    def _full_context_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-normed last-block states of a non-causal open_clip text transformer on full-context ids."""
        if getattr(self.net, "text", None) is None:
            out = self.net.forward_intermediates(text=ids, text_indices=1, intermediates_only=True,
                                                 normalize_intermediates=True)
        else:
            out = self.net.text.forward_intermediates(ids, indices=1, intermediates_only=True,
                                                      normalize_intermediates=True, output_fmt="NLC")
        return out["text_intermediates"][-1]

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp()

    def logit_bias(self) -> torch.Tensor | None:
        return getattr(self.net, "logit_bias", None)


def _image_projection(visual: nn.Module) -> nn.Module | torch.Tensor | None:
    """The tokenwise map from the vision tower's width to the joint space, or None if it has none.

    open_clip ViTs hold a `proj` matrix; timm towers a `head` of tokenwise layers unless it pools.
    """
    if isinstance(getattr(visual, "proj", None), (torch.Tensor, nn.Module)):
        return visual.proj
    head = getattr(visual, "head", None)
    if isinstance(head, nn.Sequential) and not hasattr(head, "pool"):
        return head
    return None


def _project(tokens: torch.Tensor, projection: nn.Module | torch.Tensor | None) -> torch.Tensor:
    if projection is None:
        return tokens
    return projection(tokens) if isinstance(projection, nn.Module) else tokens @ projection


def _has_prefix(net: nn.Module, prefix: str) -> bool:
    return any(n == prefix or n.startswith(prefix + ".") for n, _ in net.named_parameters())


def _block_suffixes(tower: nn.Module) -> list[str]:
    names = {n for n, _ in tower.named_modules()}
    if any(isinstance(m, nn.MultiheadAttention) for m in tower.modules()):
        return OPEN_CLIP_BLOCK
    for suffixes in (TIMM_BLOCK, BERT_BLOCK, HF_CLIP_BLOCK):
        if any(n.endswith(suffixes[0]) for n in names):
            return suffixes
    return []


def infer_open_clip_spec(net: nn.Module, spec: ModelSpec) -> ModelSpec:
    """Fill `partial`/`lora` defaults for open_clip models no zoo entry describes."""
    if not spec.partial:
        spec.partial = [p for p in PARTIAL_CANDIDATES if _has_prefix(net, p)]
    spec.text_prefix = "text." if hasattr(net, "text") else "transformer."
    if not spec.lora_vision:
        spec.lora_vision = _block_suffixes(net.visual)
    if not spec.lora_text:
        text_tower = net.text if hasattr(net, "text") else net.transformer
        spec.lora_text = _block_suffixes(text_tower)
    return spec


def _open_clip_error(name: str, where: str, exc: Exception) -> ModelError:
    return ModelError(
        f"cannot load weights for model '{name}' from {where} ({type(exc).__name__}: {clipped(str(exc), 200)}); "
        f"on an offline machine put the model in $MEDVLM_WEIGHTS/{name}/ (open_clip local-dir layout) "
        f"or pass model=local-dir:PATH"
    )


def load_open_clip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    if location is not None:
        model_name, pretrained = f"local-dir:{location}", None
    else:
        model_name, pretrained = entry["model"], entry.get("pretrained")
    kwargs = {}
    if entry.get("context_length"):
        kwargs["context_length"] = entry["context_length"]
    try:
        net = open_clip.create_model(model_name, pretrained=pretrained, load_weights=True,
                                     **entry.get("create_kwargs", {}), **open_clip_local_kwargs(location))
        tokenizer = open_clip.get_tokenizer(model_name, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _open_clip_error(spec.name, location or model_name + (f" (tag {pretrained})" if pretrained else ""), exc) from None
    if location is not None:
        spec.pin = {"model": f"local-dir:{Path(location).resolve()}", "sha256": weights_digest(Path(location))}
    else:
        spec.pin = {"model": entry["model"], "pretrained": pretrained}
    return OpenClipModel(net.float(), tokenizer, infer_open_clip_spec(net, spec))
