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
    entry = zoo_entries()[name]
    if entry["source"] in GENERATIVE_SOURCES:  # LLaVA family: no text tower or prompt embedding to describe
        assert entry["domain"] in ("general", "medical") and isinstance(entry["gated"], bool)
        assert all(isinstance(entry.get(f), str) and entry[f].strip() for f in ("model", "modality", "licence")), name
        return
    assert entry["source"] in BACKENDS
    assert all(isinstance(entry.get(field), str) and entry[field].strip() for field in TEXT_FIELDS), name
    assert entry["domain"] in ("general", "medical") and isinstance(entry["gated"], bool)
    assert isinstance(entry["image_size"], int) and entry["channels"] in (1, 3)
    assert len(entry["mean"]) == len(entry["std"]) == entry["channels"] and all(s > 0 for s in entry["std"])
    assert isinstance(entry["context_length"], int) and entry["context_length"] > 0
    assert entry["partial"] and set(entry["lora"]) == {"vision", "text"} and entry["lora"]["text"]
    assert set(entry["towers"]) == {"vision", "text"}
    if entry["source"] in ("pmc_clip", "cxr_clip", "medclip"):  # the authors' files: named, and a BERT mirror
        assert entry["checkpoint"] in entry["notes"] and entry["text_tower"] in entry["notes"]


def test_models_prints_every_entry_with_its_metadata(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "domain", "modality", "source", "image", "context", "licence", "gated"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(zoo_entries()) and EXPECTED <= set(rows)
    for name, entry in zoo_entries().items():
        for value in (entry["domain"], entry["modality"], entry["model"], str(entry["image_size"]),
                      str(entry["context_length"]), entry["licence"]):
            assert value in rows[name], (name, value)
        assert rows[name].rstrip().endswith("yes" if entry["gated"] else "no")
