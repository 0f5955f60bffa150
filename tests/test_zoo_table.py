"""`medvlm models`: every zoo entry is listed, with the metadata the README table and the strategies rely on."""

from __future__ import annotations

import pytest

from medvlm.cli import main
from medvlm.zoo import zoo_entries
from medvlm.zoo.factory import BACKENDS, GENERATIVE_SOURCES

TEXT_FIELDS = ("model", "domain", "modality", "pretraining", "licence", "tokenizer", "embedding", "tokens", "notes")
EXPECTED = {"clip-vit-b32", "clip-vit-b16", "biomedclip", "pmc-clip", "cxr-clip", "cxr-clip-swint", "pubmedclip",
            "plip", "quiltnet", "medclip", "medsiglip", "blip2"}


@pytest.mark.parametrize("name", sorted(zoo_entries()))
def test_entry_metadata_is_complete(name):
    """Types and required keys are the schema's job (`tests/test_zoo_schema.py`); these are the facts across keys."""
    entry = zoo_entries()[name]
    assert entry.source in (GENERATIVE_SOURCES if entry.generative else BACKENDS)
    clip_only = {"embedding", "tokens"} if entry.generative else set()
    assert all(getattr(entry, field).strip() for field in TEXT_FIELDS if field not in clip_only), name
    assert len(entry.mean) == len(entry.std) == entry.channels and all(s > 0 for s in entry.std)
    assert entry.generative or entry.lora.text
    if entry.source in ("pmc_clip", "cxr_clip", "medclip"):  # the authors' files: named, and a BERT mirror
        assert entry.checkpoint in entry.notes and entry.text_tower in entry.notes


def test_models_prints_every_entry_with_its_metadata(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "domain", "modality", "source", "image", "context", "licence", "gated"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(zoo_entries()) and EXPECTED <= set(rows)
    for name, entry in zoo_entries().items():
        for value in (entry.domain, entry.modality, entry.model, str(entry.image_size),
                      str(entry.context_length), entry.licence):
            assert value in rows[name], (name, value)
        assert rows[name].rstrip().endswith("yes" if entry.gated else "no")
