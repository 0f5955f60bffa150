"""In-domain or out-of-domain: does a model's pre-training modality cover a dataset's modality?

*Can Common VLMs Rival Medical VLMs?* splits its results this way: a dataset is in-domain (ID) for a model whose
pre-training data covers the dataset's imaging modality, and out-of-domain (OOD) otherwise.
Models' modalities come from the zoo entries; datasets' from MedMNIST's modality names, the ROCO
subset, or the VQA dataset. Coverage is by family: a "pathology" model covers colon pathology and
the other microscopy subsets, a "radiology" one X-ray, CT, MRI and ultrasound, a "universal
biomedical" one every medical family; a model of one specific modality ("chest X-ray") covers
exactly that modality. Natural-image models are OOD on every medical dataset. Anything unknown
(a `local-dir:` model, a custom CSV dataset) is marked "?", never guessed.
"""

from __future__ import annotations

from typing import Literal

from medvlm.data.prompts import MODALITIES

Domain = Literal["ID", "OOD", "?"]

FAMILIES = {
    "chest X-ray": "radiology", "abdominal CT": "radiology", "breast ultrasound": "radiology",
    "radiology": "radiology", "colon pathology": "pathology", "blood cell microscopy": "pathology",
    "kidney cortex microscopy": "pathology", "pathology": "pathology", "dermatoscopy": "dermatology",
    "retinal OCT": "ophthalmology", "retinal fundus": "ophthalmology",
    "non-radiology biomedical": "biomedical", "mixed biomedical": "biomedical",
}
MEDICAL_FAMILIES = frozenset(FAMILIES.values())
COVERAGE = {
    "natural images": frozenset(),
    "universal biomedical": MEDICAL_FAMILIES,
    "radiology (ROCO)": frozenset({"radiology"}),
    "radiology": frozenset({"radiology"}),
    "pathology": frozenset({"pathology"}),
}
VQA_MODALITIES = {"vqa_rad": "radiology", "vqa-rad": "radiology", "vqarad": "radiology", "slake": "radiology",
                  "pathvqa": "pathology", "path-vqa": "pathology"}
ROCO_MODALITIES = {"radiology": "radiology", "non-radiology": "non-radiology biomedical", "mixed": "mixed biomedical"}


def model_modality(model: str) -> str:
    from medvlm.zoo import zoo_entries

    return zoo_entries().get(model, {}).get("modality", "unknown")


def dataset_modality(task: str, dataset: str, subset: str = "") -> str:
    """The imaging modality of a dataset by name; "unknown" for anything else."""
    name = dataset.strip().lower()
    if task == "retrieval" and "roco" in name:
        return ROCO_MODALITIES.get(subset or "mixed", "unknown")
    if task == "vqa":
        return next((m for key, m in VQA_MODALITIES.items() if key in name), "unknown")
    return MODALITIES.get(name, "unknown")


def domain_of(model_mod: str, data_mod: str) -> Domain:
    """ID when the model's pre-training modality covers the dataset's, OOD when not, "?" when either is unknown."""
    if model_mod == "unknown" or data_mod == "unknown":
        return "?"
    if model_mod.lower() == data_mod.lower():
        return "ID"
    return "ID" if FAMILIES.get(data_mod) in COVERAGE.get(model_mod, frozenset()) else "OOD"
