"""The `dataset=hf:...` syntax: a Hugging Face `datasets` dataset, named once, parsed in one place.

    hf:ORG/NAME                                   a Hub dataset (or its copy in the local HF cache)
    hf:ORG/NAME?config=C&revision=R               a config (subset) and a revision of it
    hf:ORG/NAME?train=train&val=valid&test=test   which of its splits are medvlm's train/val/test
    hf:PATH                                       a folder written by `save_to_disk`

The config schema validates the query (so a typo fails before any run exists) and the loader
(`medvlm.data.hub`) reads it; this module imports nothing heavy, as `medvlm --help` loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

PREFIX = "hf:"
SPLIT_KEYS = ("train", "val", "test")
KEYS = ("config", "revision", *SPLIT_KEYS)
SYNTAX = "hf:ORG/NAME or hf:FOLDER, optionally ?config=C&revision=R&train=S&val=S&test=S"


@dataclass(frozen=True)
class HfName:
    """A parsed `hf:` dataset: the Hub id or save_to_disk folder, its config and revision, and split names."""

    name: str
    config: str | None = None
    revision: str | None = None
    splits: dict[str, str] = field(default_factory=dict)  # medvlm split -> the dataset's split name

    def __str__(self) -> str:
        return PREFIX + self.name + (f" (config {self.config})" if self.config else "")


def is_hf(dataset: str) -> bool:
    return dataset.strip().lower().startswith(PREFIX)


def parse_hf(dataset: str) -> HfName:
    """`hf:NAME?key=value&...` -> HfName; ValueError naming the bad part and the syntax."""
    text = dataset.strip()[len(PREFIX):]
    name, _, query = text.partition("?")
    if not name.strip():
        raise ValueError(f"names no dataset; write {SYNTAX}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"has a malformed query '?{query}'; write {SYNTAX}") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in KEYS:
            raise ValueError(f"has an unknown option '{key}' (options: {', '.join(KEYS)}); write {SYNTAX}")
        if key in options:
            raise ValueError(f"sets '{key}' twice; write {SYNTAX}")
        if not value.strip():
            raise ValueError(f"leaves '{key}' empty; write {SYNTAX}")
        options[key] = value.strip()
    splits = {key: options[key] for key in SPLIT_KEYS if key in options}
    return HfName(name.strip(), options.get("config"), options.get("revision"), splits)
