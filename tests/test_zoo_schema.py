"""The zoo's schema: entries are validated when the zoo loads, and their typed pre-training coverage is
what reports read to mark a dataset in-domain (ID) or out-of-domain (OOD) for a model."""

from __future__ import annotations

import json
import typing

import pytest

from medvlm.data.prompts import MODALITIES
from medvlm.errors import ModelError
from medvlm.report.cells import build_cells
from medvlm.report.domains import FAMILIES, dataset_modality, domain_of, model_coverage
from medvlm.report.select import RunRecord
from medvlm.zoo import entries
from medvlm.zoo.entries import zoo_entries
from medvlm.zoo.schema import Family, Modality

ALL = set(MODALITIES)
CHEST = {"chestmnist", "pneumoniamnist"}
PATHOLOGY = {"pathmnist", "bloodmnist", "tissuemnist"}
RADIOLOGY = CHEST | {"breastmnist", "organamnist", "organcmnist", "organsmnist"}
# Every zoo entry -> the MedMNIST subsets its pre-training covers; every other subset is OOD.
IN_DOMAIN = {
    "clip-vit-b32": set(), "clip-vit-b16": set(), "blip2": set(), "llava-1.5-7b": set(),
    "biomedclip": ALL, "pmc-clip": ALL, "medsiglip": ALL, "llava-med": ALL,
    "cxr-clip": CHEST, "cxr-clip-swint": CHEST, "medclip": CHEST,
    "plip": PATHOLOGY, "quiltnet": PATHOLOGY, "pubmedclip": RADIOLOGY,
}


def test_the_table_covers_every_zoo_entry():
    assert set(IN_DOMAIN) == set(zoo_entries())


@pytest.mark.parametrize("model", sorted(IN_DOMAIN))
def test_every_zoo_entry_marks_every_medmnist_subset(model):
    marks = {subset: domain_of(model_coverage(model), dataset_modality("classification", subset)) for subset in ALL}
    assert {s for s, m in marks.items() if m == "ID"} == IN_DOMAIN[model]
    assert {s for s, m in marks.items() if m == "OOD"} == ALL - IN_DOMAIN[model]


def test_unknown_models_and_datasets_are_never_guessed():
    assert model_coverage("local-dir:/somewhere") is None
    assert domain_of(None, "chest X-ray") == "?"
    assert domain_of(model_coverage("biomedclip"), dataset_modality("classification", "my_table.csv")) == "?"


def test_coverage_terms_are_the_report_families_and_modalities():
    assert set(typing.get_args(Family)) == set(FAMILIES.values())
    assert set(typing.get_args(Modality)) <= set(FAMILIES)


def test_medsiglip_is_in_domain_on_chest_x_ray_in_a_report():
    run = RunRecord(run_id="r1", experiment_id="0", status="FINISHED", name="n", task="classification", model="medsiglip",
                    domain="medical", dataset="pneumoniamnist", strategy="zeroshot", train_fraction=1.0, variant="",
                    study="", study_kind="", parent="", trial=0, start_time=0, params={}, metrics={"test_auc": 0.9},
                    testset="pneumoniamnist")
    (cell,) = build_cells([run])
    assert (cell.data_modality, cell.in_domain) == ("chest X-ray", "ID")


def test_a_malformed_entry_fails_at_load_naming_the_file_and_key(tmp_path, monkeypatch):
    good = json.loads((entries.CONFIG_DIR / "plip.json").read_text())
    (tmp_path / "typo.json").write_text(json.dumps({**good, "coverage": ["pathology", "histology"]}))
    monkeypatch.setattr(entries, "CONFIG_DIR", tmp_path)
    entries.zoo_entries.cache_clear()
    try:
        with pytest.raises(ModelError, match=r"typo\.json is malformed at 'coverage\.1'"):
            zoo_entries()
        (tmp_path / "typo.json").write_text(json.dumps({**good, "licence_": "MIT"}))
        entries.zoo_entries.cache_clear()
        with pytest.raises(ModelError, match="licence_"):
            zoo_entries()
    finally:
        entries.zoo_entries.cache_clear()
