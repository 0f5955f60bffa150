"""Class names and zero-shot prompts, tied to label indices by construction.

Prompt set i must describe label index i; a silent reordering would swap classes in every
zero-shot result. So MedMNIST names are built by walking INFO's integer label keys 0..C-1,
and `check_prompt_order` guards every prompt list that leaves this module.
Templates follow CLIP_benchmark: a short list per dataset, one `{c}` slot for the class name;
the zero-shot classifier averages their embeddings. The prompt set is a declared choice
(`prompt_set`): that template ensemble, or the MIDL paper code's single template.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

with warnings.catch_warnings():
    # medmnist warns at import when it cannot create ~/.medmnist; medvlm never uses that folder.
    warnings.filterwarnings("ignore", message="Failed to setup default root")
    from medmnist.info import INFO

TEMPLATES = (
    "{a} {modality} image of {c}.",
    "{a} {modality} image showing {c}.",
    "a photo of {c}.",
    "{c}.",
)

# The only template of the MIDL paper's released code.
PAPER_TEMPLATE = "this is a photo of {c}"

# Imaging modality of each 2D subset, as the MedMNIST v2 paper names it.
MODALITIES = {
    "pathmnist": "colon pathology",
    "chestmnist": "chest X-ray",
    "dermamnist": "dermatoscopy",
    "octmnist": "retinal OCT",
    "pneumoniamnist": "chest X-ray",
    "retinamnist": "retinal fundus",
    "breastmnist": "breast ultrasound",
    "bloodmnist": "blood cell microscopy",
    "tissuemnist": "kidney cortex microscopy",
    "organamnist": "abdominal CT",
    "organcmnist": "abdominal CT",
    "organsmnist": "abdominal CT",
}

# INFO label text -> prompt-friendly name, where INFO's wording reads badly in a sentence.
# Keyed by the label text, not the index, so the index mapping always comes from INFO.
_RENAMES = {
    "breastmnist": {"normal, benign": "normal or benign"},
    "retinamnist": {  # DeepDRiD grades; names as CLIP_benchmark's diabetic_retinopathy
        "0": "no diabetic retinopathy",
        "1": "mild diabetic retinopathy",
        "2": "moderate diabetic retinopathy",
        "3": "severe diabetic retinopathy",
        "4": "proliferative diabetic retinopathy",
    },
    "bloodmnist": {"immature granulocytes(myelocytes, metamyelocytes and promyelocytes)": "immature granulocytes"},
    "chestmnist": {"pleural": "pleural thickening"},
    "tissuemnist": {"Collecting Duct, Connecting Tubule": "collecting duct or connecting tubule"},
}


def _readable(flag: str, label: str) -> str:
    renamed = _RENAMES.get(flag, {}).get(label)
    if renamed is not None:
        return renamed
    side = re.fullmatch(r"(.+)-(left|right)", label)  # organ labels: "kidney-left" -> "left kidney"
    return f"{side[2]} {side[1]}" if side else label.lower()


def class_names(flag: str) -> list[str]:
    """Readable class names of a MedMNIST subset, element i = label index i."""
    labels = INFO[flag]["label"]
    keys = sorted(int(k) for k in labels)
    if keys != list(range(len(labels))):
        raise ValueError(f"{flag}: INFO label keys are {keys}, expected 0..{len(labels) - 1}")
    return [_readable(flag, labels[str(i)]) for i in range(len(labels))]


def _fill(class_names: Sequence[str], modality: str) -> list[list[str]]:
    article = "an" if modality[:1].lower() in "aeiou" else "a"
    texts = [t.format(a=article, modality=modality, c="{c}") for t in TEMPLATES]
    prompts = [[t.format(c=name) for t in texts] for name in class_names]
    check_prompt_order(class_names, prompts)
    return prompts


def class_prompts(flag: str) -> list[list[str]]:
    """One prompt list per class index of a MedMNIST subset."""
    return _fill(class_names(flag), MODALITIES.get(flag, "medical"))


def generic_prompts(class_names: Sequence[str], modality: str = "medical") -> list[list[str]]:
    """Prompts for a bring-your-own dataset; underscores in names become spaces."""
    return _fill([name.replace("_", " ").strip() for name in class_names], modality)


def _normalised(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def check_prompt_order(class_names: Sequence[str], prompts: Sequence[Sequence[str]]) -> None:
    """Raise ValueError unless every prompt in set i mentions class name i."""
    if len(prompts) != len(class_names):
        raise ValueError(f"{len(prompts)} prompt sets for {len(class_names)} classes")
    for i, (name, texts) in enumerate(zip(class_names, prompts)):
        if not texts:
            raise ValueError(f"prompt set {i} for class '{name}' is empty")
        wrong = [t for t in texts if _normalised(name) not in _normalised(t)]
        if wrong:
            raise ValueError(f"prompt set {i} does not match class {i} '{name}': {wrong[0]!r}")


def select_prompts(prompt_set: str, class_names: Sequence[str], ensemble: list[list[str]]) -> list[list[str]]:
    """The prompts of the declared set: `ensemble` (the dataset's templates) or `paper` (one template)."""
    if prompt_set == "ensemble":
        return ensemble
    prompts = [[PAPER_TEMPLATE.format(c=name)] for name in class_names]
    check_prompt_order(class_names, prompts)
    return prompts
