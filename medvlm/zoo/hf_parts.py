"""Hugging Face pieces the custom backends share: towers' configs, tokenizers, strict BERT/Swin loading.

The authors' checkpoints (PMC-CLIP, CXR-CLIP, MedCLIP) hold every weight of their BERT text
tower but not its config or vocabulary; those come from the BERT's own Hub repository,
read from its `$MEDVLM_WEIGHTS/<org>/<repo>` mirror when present (see `checkpoints.hub_source`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvlm.errors import ModelError
from medvlm.network import clipped
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import drop_index_buffers, hf_from_state, hub_source, take


PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def preprocess_from(folder: str, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                    resample: int = 3) -> Preprocess:
    """Mean/std/resampling from a transformers folder's preprocessor_config.json, else the given defaults."""
    cfg_path = Path(folder) / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    return Preprocess(image_size=size, mean=tuple(cfg.get("image_mean", mean)), std=tuple(cfg.get("image_std", std)),
                      interpolation=PIL_RESAMPLE.get(cfg.get("resample", resample), "bicubic"))


def _from_hub(auto_class: Any, repo_id: str, name: str, what: str) -> Any:
    """`auto_class.from_pretrained` on the repository's mirror (else the Hub); a failure is one fixable line."""
    source = hub_source(repo_id)
    try:
        return auto_class.from_pretrained(source, local_files_only=source != repo_id)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model '{name}': cannot read the {what} of {repo_id} ({clipped(str(exc), 160)}); offline, "
            f"put that repository's config.json and tokenizer files in $MEDVLM_WEIGHTS/{repo_id}/"
        ) from None


def text_config(repo_id: str, name: str) -> Any:
    """The config.json of a Hub repository the model depends on (any tower, despite the name)."""
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoConfig

    return _from_hub(AutoConfig, repo_id, name, "config")


def tokenizer(repo_id: str, name: str) -> Any:
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoTokenizer

    return _from_hub(AutoTokenizer, repo_id, name, "tokenizer")


def tokenize(tok: Any, texts: list[str], length: int) -> TextBatch:
    """Ids padded and cut to `length` tokens (special tokens included); counts the texts cut short."""
    full = tok(list(texts), add_special_tokens=True)["input_ids"]
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=length, return_attention_mask=True,
              return_tensors="pt")
    return TextBatch(enc["input_ids"], enc["attention_mask"].bool(), sum(len(ids) > length for ids in full))


class TokenizerClipModel(ClipModel):
    """A backend whose text goes through a transformers tokenizer, padded and cut to the spec's context length."""

    def __init__(self, net: nn.Module, tokenizer: Any, spec: ModelSpec, preprocess: Preprocess, embed_dim: int):
        super().__init__(spec, preprocess, embed_dim)
        self.net = net
        self.tokenizer = tokenizer

    def tokenize(self, texts: list[str]) -> TextBatch:
        return tokenize(self.tokenizer, texts, self.spec.context_length)


def full_context(text: TextBatch, length: int, pad_id: int) -> TextBatch:
    """Ids right-padded back to `length` (callers may cut trailing padding off), for towers that attend to padding."""
    missing = length - text.input_ids.shape[1]
    if missing <= 0:
        return text
    return TextBatch(torch.nn.functional.pad(text.input_ids, (0, missing), value=pad_id),
                     torch.nn.functional.pad(text.attention_mask, (0, missing), value=False), text.truncated)


def bert_from_state(state: dict[str, torch.Tensor], repo_id: str, name: str) -> nn.Module:
    """A BERT text tower (no pooler) with exactly the checkpoint's weights.

    Two groups of keys are dropped knowingly: `embeddings.position_ids`, a constant that
    transformers < 4.31 saved and current versions rebuild (checked equal to 0..n-1), and
    `pooler.*`, BERT's pooler, which none of these models' embeddings use (left in, its
    parameters would get no gradient, which distributed training rejects).
    """
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import BertModel

    positions = state.get("embeddings.position_embeddings.weight")
    drop_index_buffers(state, "embeddings.position_ids", None if positions is None else torch.arange(len(positions)),
                       name)
    take(state, "pooler.")
    return hf_from_state(BertModel, text_config(repo_id, name), state, name, f"text encoder ({repo_id})",
                         add_pooling_layer=False)


def swin_from_state(state: dict[str, torch.Tensor], repo_id: str, name: str) -> nn.Module:
    """A transformers SwinModel with exactly the checkpoint's weights, saved by transformers 4.x.

    transformers' own renames map the 4.x keys (`attention.self.query`, ...) to today's; the
    4.x checkpoints also hold `relative_position_index` buffers, constants that today's
    Swin rebuilds: each is checked equal to the rebuilt one and dropped.
    """
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import SwinModel

    indices = {k: state.pop(k) for k in [k for k in state if k.endswith("relative_position_index")]}
    model = hf_from_state(SwinModel, text_config(repo_id, name), state, name, f"image encoder ({repo_id})")
    rebuilt = {k: v for k, v in model.named_buffers() if k.endswith("relative_position_index")}
    for key, value in indices.items():
        match = key.replace("attention.self.", "attention.relative_position_bias.")
        if match not in rebuilt or not torch.equal(rebuilt[match].long(), value.long()):
            raise ModelError(f"model '{name}': {key} does not match the Swin window layout; the checkpoint is "
                             f"not the release medvlm reads")
    return model
