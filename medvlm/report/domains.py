"""In-domain or out-of-domain: does a model's pre-training cover a dataset's modality?

*Can Common VLMs Rival Medical VLMs?* splits its results this way: a dataset is in-domain (ID) for a model whose
pre-training data covers the dataset's imaging modality, and out-of-domain (OOD) otherwise.
What a model covers is its zoo entry's typed `coverage` (`medvlm.zoo.schema`); a dataset's modality
comes from MedMNIST's modality names, the ROCO subset, or the VQA dataset. Coverage is by family or
by one modality: "pathology" covers colon pathology and the other microscopy subsets, "radiology"
X-ray, CT, MRI and ultrasound; "chest X-ray" covers exactly that modality. Natural-image models
cover nothing medical. Anything unknown (a `local-dir:` model, a custom CSV dataset) is marked "?",
never guessed.
"""

from __future__ import annotations

from typing import Literal

from medvlm.data.prompts import MODALITIES
from medvlm.zoo.entries import zoo_entries

Domain = Literal["ID", "OOD", "?"]

FAMILIES = {
    "chest X-ray": "radiology", "abdominal CT": "radiology", "breast ultrasound": "radiology",
    "radiology": "radiology", "colon pathology": "pathology", "blood cell microscopy": "pathology",
    "kidney cortex microscopy": "pathology", "pathology": "pathology", "dermatoscopy": "dermatology",
    "retinal OCT": "ophthalmology", "retinal fundus": "ophthalmology",
    "non-radiology biomedical": "biomedical", "mixed biomedical": "biomedical",
}
VQA_MODALITIES = {"vqa_rad": "radiology", "vqa-rad": "radiology", "vqarad": "radiology", "slake": "radiology",
                  "pathvqa": "pathology", "path-vqa": "pathology"}
ROCO_MODALITIES = {"radiology": "radiology", "non-radiology": "non-radiology biomedical", "mixed": "mixed biomedical"}


def model_coverage(model: str) -> frozenset[str] | None:
    """The zoo entry's pre-training coverage; None for a model the zoo does not describe."""
    entry = zoo_entries().get(model)
    return frozenset(entry.coverage) if entry is not None else None


def dataset_modality(task: str, dataset: str, subset: str = "") -> str:
    """The imaging modality of a dataset by name; "unknown" for anything else."""
    name = dataset.strip().lower()
    if task == "retrieval" and "roco" in name:
        return ROCO_MODALITIES.get(subset or "mixed", "unknown")
    if task == "vqa":
        return next((m for key, m in VQA_MODALITIES.items() if key in name), "unknown")
    return MODALITIES.get(name, "unknown")


def domain_of(coverage: frozenset[str] | None, data_mod: str) -> Domain:
    """ID when the model's coverage holds the dataset's modality or its family, OOD when not, "?" when either
    is unknown."""
    if coverage is None or data_mod == "unknown":
        return "?"
    return "ID" if data_mod in coverage or FAMILIES.get(data_mod) in coverage else "OOD"
