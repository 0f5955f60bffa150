"""Hugging Face pieces the custom backends share: a text tower's config and tokenizer, and tokenising.

The authors' checkpoints (PMC-CLIP, CXR-CLIP, MedCLIP) hold every weight of their BERT text
tower but not its config or vocabulary; those come from the BERT's own Hub repository,
read from its `$MEDVLM_WEIGHTS/<org>/<repo>` mirror when present (see `checkpoints.hub_source`).
"""

from __future__ import annotations

from typing import Any

from medvlm.errors import ModelError
from medvlm.zoo.base import TextBatch
from medvlm.zoo.checkpoints import hub_source


def _hub_error(name: str, repo_id: str, what: str, exc: Exception) -> ModelError:
    return ModelError(
        f"model '{name}': cannot read the {what} of {repo_id} ({str(exc).splitlines()[0][:160]}); offline, "
        f"put that repository's config.json and tokenizer files in $MEDVLM_WEIGHTS/{repo_id}/"
    )


def text_config(repo_id: str, name: str) -> Any:
    from transformers import AutoConfig

    source = hub_source(repo_id)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=source != repo_id)
    except (OSError, ValueError) as exc:
        raise _hub_error(name, repo_id, "config", exc) from None


def tokenizer(repo_id: str, name: str) -> Any:
    from transformers import AutoTokenizer

    source = hub_source(repo_id)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=source != repo_id)
    except (OSError, ValueError) as exc:
        raise _hub_error(name, repo_id, "tokenizer", exc) from None


def tokenize(tok: Any, texts: list[str], length: int) -> TextBatch:
    """Ids padded and cut to `length` tokens (special tokens included); counts the texts cut short."""
    full = tok(list(texts), add_special_tokens=True)["input_ids"]
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return TextBatch(enc["input_ids"], enc["attention_mask"].bool(), sum(len(ids) > length for ids in full))
