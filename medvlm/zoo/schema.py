"""The shape of a zoo entry (`zoo/configs/<name>.json`), validated when the zoo loads.

A misspelt key or a wrong type fails at load with the file and the key named, never later inside
a backend. `coverage` is what the model's pre-training data covers, in the report's terms: a
modality family (radiology, pathology, ...) or one modality (chest X-ray); whether a dataset is
in-domain for a model is read from it, so a new model needs no second table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Modality families, and the single modalities a model may be limited to (the datasets' own names).
Family = Literal["radiology", "pathology", "dermatology", "ophthalmology", "biomedical"]
Modality = Literal["chest X-ray", "abdominal CT", "breast ultrasound", "colon pathology", "blood cell microscopy",
                   "kidney cortex microscopy", "dermatoscopy", "retinal OCT", "retinal fundus"]
Coverage = Literal[Family, Modality]


class LoraTargets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vision: list[str]
    text: list[str]


class Towers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vision: str
    text: str


class ZooEntry(BaseModel):
    """One model of the zoo: where its weights come from, what it was trained on, how to feed it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="backend that loads it (a key of zoo.factory.BACKENDS)")
    model: str
    pretrained: str | None = None
    domain: Literal["general", "medical"]
    modality: str = Field(description="pre-training modality in words, as `medvlm models` shows it")
    coverage: list[Coverage] = Field(description="what pre-training covers; empty = natural images only")
    pretraining: str
    licence: str
    gated: bool
    image_size: int = Field(gt=0)
    mean: list[float]
    std: list[float]
    channels: Literal[1, 3]
    tokenizer: str
    context_length: int = Field(gt=0)
    generative: bool = Field(False, description="a LLaVA-family model that answers by generation (no CLIP embeddings)")
    image_tokens: int | None = Field(None, gt=0, description="generative: image tokens the projector feeds the language model")
    embedding: str | None = Field(None, description="CLIP models: how image and text embeddings are made")
    tokens: str | None = Field(None, description="CLIP models: the token grids VQA's BAN head attends over")
    partial: list[str] = Field(min_length=1)
    lora: LoraTargets | None = None
    towers: Towers | None = None
    notes: str
    text_tower: str | None = None
    image_tower: str | None = None
    checkpoint: str | None = None
    architecture: str | None = None
    download: dict[str, str] | None = None
    prompt_style: str | None = None
    zero_shot: str | None = None
    create_kwargs: dict[str, object] | None = None

    @model_validator(mode="after")
    def _clip_fields(self) -> ZooEntry:
        """A CLIP-family entry must say how it embeds and what LoRA and `partial` reach; a generative one says it in `notes`."""
        missing = [k for k in ("embedding", "tokens", "lora", "towers") if getattr(self, k) is None]
        if not self.generative and missing:
            raise ValueError(f"a CLIP-family entry needs {', '.join(missing)}")
        return self
