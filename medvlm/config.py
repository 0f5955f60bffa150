"""The one config schema.

MLproject `-P key=value`, CLI `--key value` and YAML spec keys all land here, so a
parameter has one name, one type and one validation rule everywhere. Values arrive
as strings from the command line; pydantic coerces them ("1e-4" -> 1e-4).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from medvlm.catalog import STRATEGY_KINDS, TASKS
from medvlm.hf_name import is_hf, parse_hf
from medvlm.errors import ConfigError

Task = Literal["classification", "retrieval", "vqa"]
Strategy = Literal["zeroshot", "linear", "frozen", "partial", "full", "lora", "mlp"]
LoraParts = Literal["", "v", "l", "m", "vm", "lm", "vml"]
FigureFormat = Literal["png", "svg"]
FIGURE_FORMAT_HELP = "file format of the plots: png (200 dpi) or svg (vector, for papers)"
MEDMNIST_SIZES = (28, 64, 128, 224)
SchemaT = TypeVar("SchemaT", bound=BaseModel)
ItemT = TypeVar("ItemT")


def split_commas(value: Any) -> Any:
    """"a, b,c" -> ["a", "b", "c"]: lists arrive from flags and MLproject `-P` as one string; YAML lists pass as they are."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list parameter written "a,b,c" on the command line (every schema's list fields use it).
CommaList = Annotated[list[ItemT], BeforeValidator(split_commas)]
RUN_ENTRY_POINTS = ("zeroshot", "finetune", "ablation", "stability", "sweep")
# Field metadata says where a parameter means something. `entry_points`: the commands that take it (`zeroshot`
# takes no training parameter). `trains`: only for a strategy that trains; `strategies` / `tasks`: only for
# those. A run logs the parameters that apply to it (`RunConfig.applicable`), so a linear run has no LoRA rank.
TRAINING_ENTRY_POINTS = {"entry_points": ("finetune", "ablation", "stability", "sweep")}
TRAINING = {**TRAINING_ENTRY_POINTS, "trains": True}
LORA = {**TRAINING, "strategies": ("lora",)}
ADAPTER = {**TRAINING, "strategies": tuple(k.name for k in STRATEGY_KINDS.values() if k.produces_adapter)}
HEAD = {**TRAINING, "tasks": ("classification",), "strategies": ("partial", "full", "lora")}
CLASSIFICATION = {"tasks": ("classification",)}
RETRIEVAL = {"tasks": ("retrieval",)}
VQA = {"tasks": ("vqa",)}


def default_data_root() -> str:
    """`MEDVLM_DATA`, else `~/.cache/medvlm/data` (where `medmnist` downloads go too)."""
    return os.environ.get("MEDVLM_DATA") or str(Path.home() / ".cache" / "medvlm" / "data")


class RunConfig(BaseModel):
    """Everything that defines one experiment. Logged, fully resolved, with every run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(description="zoo name (`medvlm models` lists them), open_clip ARCH@TAG, hf-hub:ID, local-dir:PATH, or a transformers CLIP / LLaVA id (hf:ID) or folder")
    dataset: str = Field(description="dataset name (e.g. breastmnist), image folder, CSV/parquet file, or a Hugging Face dataset: hf:ORG/NAME or hf:FOLDER (save_to_disk), optionally ?config=C&revision=R&train=S&val=S&test=S")
    task: Task = Field("classification", description="what the model is evaluated or trained on")
    strategy: Strategy = Field("zeroshot", description="what trains: linear (head on cached features), frozen (VQA head on cached tokens), partial (projections + logit scale), full, lora, mlp (LLaVA projector)", json_schema_extra=TRAINING_ENTRY_POINTS)
    size: int = Field(224, description="MedMNIST+ image size to read", json_schema_extra={"choices": MEDMNIST_SIZES, **CLASSIFICATION})
    data_root: str = Field(default_factory=default_data_root, description="root folder for datasets")
    epochs: int = Field(10, ge=1, description="most training epochs (early stopping may end sooner)", json_schema_extra=TRAINING)
    batch_size: int = Field(64, ge=1, description="training batch size per process", json_schema_extra=TRAINING)
    eval_batch_size: int = Field(256, ge=1, description="batch size for validation, test and feature encoding")
    lr: float = Field(1e-4, gt=0, description="learning rate", json_schema_extra=TRAINING)
    weight_decay: float = Field(0.0, ge=0, description="optimizer weight decay", json_schema_extra=TRAINING)
    optimizer: Literal["adamw", "adam"] = Field("adamw", description="adamw (decoupled weight decay) or adam (weight decay as an L2 term; the MIDL paper used Adam)", json_schema_extra=TRAINING)
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps", json_schema_extra=TRAINING)
    patience: int = Field(3, ge=1, description="early-stopping patience in epochs (validation loss)", json_schema_extra=TRAINING)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    seed: int = Field(0, description="seed of weights initialisation, data order and dropout")
    head: Literal["prompt", "linear"] = Field("prompt", description="classification head for partial/full/lora: prompt (logit_scale * cos with the class prompts' text embeddings, text tower in the graph, no extra layer, as the MIDL paper) or linear (a linear layer on image embeddings); strategy=linear always uses a linear head", json_schema_extra=HEAD)
    head_init: Literal["random", "zeroshot"] = Field("random", description="head=linear: start from a random layer or from the zero-shot prompt embeddings", json_schema_extra={**TRAINING, **CLASSIFICATION})
    prompt_set: Literal["ensemble", "paper"] = Field("ensemble", description="class prompts: ensemble (CLIP_benchmark-style templates, averaged) or paper (the MIDL code's single 'this is a photo of {label}')")
    lora_r: int = Field(8, ge=1, description="LoRA rank", json_schema_extra=LORA)
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / r", json_schema_extra=LORA)
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input", json_schema_extra=LORA)
    lora_targets: CommaList[str] = Field(default_factory=list, description="module-name suffixes to adapt; empty = the zoo entry's defaults", json_schema_extra=LORA)
    lora_text: bool = Field(False, description="also adapt the text tower", json_schema_extra=LORA)
    lora_parts: LoraParts = Field("", description="generative (LLaVA) models: LoRA on v (vision tower), l (language model), m (projector) or vm/lm/vml; empty = l", json_schema_extra={**LORA, **VQA})
    max_new_tokens: int = Field(32, ge=1, description="generative VQA: greedy decoding stops after this many new tokens (or at EOS)", json_schema_extra=VQA)
    gradient_checkpointing: bool = Field(False, description="generative models: recompute activations in backward to save memory", json_schema_extra=TRAINING)
    judge: str = Field("", description="generative VQA: a local transformers chat model (folder or hf: id) that scores open answers 1-100; empty = off", json_schema_extra=VQA)
    label_policy: Literal["ones", "zeros", "ignore"] = Field("zeros", description="CheXpert-style uncertain (-1) labels", json_schema_extra=CLASSIFICATION)
    image_column: str = Field("image", description="CSV/parquet/hf: column with images (paths, or encoded images)")
    label_columns: CommaList[str] = Field(default_factory=list, description="CSV/parquet/hf: label columns (several = multi-label; hf: default label)", json_schema_extra=CLASSIFICATION)
    caption_column: str = Field("caption", description="retrieval: CSV/parquet/hf: column with captions", json_schema_extra=RETRIEVAL)
    question_column: str = Field("question", description="VQA: CSV/parquet/hf: column with questions", json_schema_extra=VQA)
    answer_column: str = Field("answer", description="VQA: CSV/parquet/hf: column with answers", json_schema_extra=VQA)
    subset: Literal["radiology", "non-radiology", "mixed"] = Field("mixed", description="retrieval: ROCO subset (mixed = both; tables need a 'subset' column otherwise)", json_schema_extra=RETRIEVAL)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = load in the main process)")
    compile: bool = Field(False, description="torch.compile the trained module: fewer kernel launches on GPU; the first steps pay the compile time", json_schema_extra=TRAINING)
    figure_format: FigureFormat = Field("png", description=FIGURE_FORMAT_HELP)
    experiment: str = Field("", description="MLflow experiment; empty: MLFLOW_EXPERIMENT_NAME, else mlflow run's experiment, else 'Default'")
    run_name: str = Field("", description="MLflow run name; empty = MLFLOW_RUN_NAME, else 'model · dataset · strategy'")
    system_metrics: bool = Field(False, description="log CPU, memory, disk, network (and GPU, with pynvml) use as system/* metrics every 10 s (MLflow system metrics; MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true turns them on everywhere)")
    register_adapter: bool = Field(True, description="log the adapter (lora, mlp) as an MLflow model and register it in the Model Registry; study trials only log it (see register_best)", json_schema_extra=ADAPTER)
    resume: str = Field("", description="MLflow run id of an interrupted finetune run to continue", json_schema_extra=TRAINING)
    checkpoint_dir: str = Field(default_factory=lambda: os.environ.get("MEDVLM_CHECKPOINTS", ".medvlm/checkpoints"), description="folder for per-run resume checkpoints (MEDVLM_CHECKPOINTS); a run's folder is removed when it finishes", json_schema_extra=TRAINING)
    checkpoint_every: float = Field(600.0, ge=0, description="seconds of training between resume checkpoints (weights, optimiser state, RNG); 0 = after every epoch. Ctrl-C finishes the epoch and checkpoints it; a kill loses at most this much training", json_schema_extra=TRAINING)
    study: str = Field("", description="study name when this run is a study trial")
    train_fraction: float = Field(1.0, gt=0, le=1, description="fraction of the train split to use: a label-stratified subsample (data-fraction ablations)", json_schema_extra=TRAINING)
    subsample_val: bool = Field(False, description="subsample the validation split by train_fraction too (the paper's ablation did)", json_schema_extra=TRAINING)
    subsample_seed: int = Field(0, description="seed of the train_fraction subsample; fixed apart from seed so seeds vary training, not data", json_schema_extra=TRAINING)
    split: Literal["auto", "image", "official"] = Field("auto", description="VQA split: auto (VQA-RAD by image, else the source's own), image (seeded, no image in two splits) or official", json_schema_extra=VQA)
    max_rows: int = Field(0, ge=0, description="VQA: keep the first N QA rows of each split (0 = all; smoke tests)", json_schema_extra=VQA)
    vqa_hidden: int = Field(512, ge=1, description="VQA BAN head hidden size", json_schema_extra={**TRAINING, **VQA})
    vqa_glimpses: int = Field(2, ge=1, description="VQA BAN head attention glimpses", json_schema_extra={**TRAINING, **VQA})

    @field_validator("size")
    @classmethod
    def _medmnist_size(cls, value: int) -> int:
        if value not in MEDMNIST_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, MEDMNIST_SIZES))}")
        return value

    @field_validator("model", "dataset")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("dataset")
    @classmethod
    def _hf_name(cls, value: str) -> str:
        if is_hf(value):
            parse_hf(value)
        return value

    @model_validator(mode="after")
    def _strategy_fits_task(self) -> RunConfig:
        why = TASKS[self.task].check_strategy(self.strategy)
        if why:
            raise ValueError(why)
        if self.lora_parts and self.strategy != "lora":
            raise ValueError(f"lora_parts={self.lora_parts} needs strategy=lora")
        if self.head_init == "zeroshot" and self.head == "prompt" and self.strategy in ("partial", "full", "lora"):
            raise ValueError("head_init=zeroshot starts a linear head, and the prompt classifier (head=prompt) has "
                             "none; pass head=linear too, or drop head_init")
        return self

    def resolved(self) -> dict[str, Any]:
        """A JSON-safe dict of every field, defaults included."""
        return json.loads(self.model_dump_json())

    def applies(self, name: str) -> bool:
        """Whether parameter `name` means something for this run (its field metadata against the strategy and task)."""
        extra = RunConfig.model_fields[name].json_schema_extra or {}
        return ((not extra.get("trains") or STRATEGY_KINDS[self.strategy].trains)
                and self.strategy in extra.get("strategies", (self.strategy,))
                and self.task in extra.get("tasks", (self.task,)))

    def applicable(self) -> dict[str, Any]:
        """`resolved()` without the parameters that do not apply: what a run logs as its params."""
        return {k: v for k, v in self.resolved().items() if self.applies(k)}


def field_choices(field: FieldInfo) -> tuple[str, ...]:
    """The values a parameter takes, for help texts: its Literal's (of a list's items for a list) or the
    `choices` in its metadata; () when it takes any value. Validation stays with the schema."""
    annotation = field.annotation
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    values = get_args(annotation) if get_origin(annotation) is Literal else (field.json_schema_extra or {}).get("choices", ())
    return tuple(str(v) for v in values if v != "")


def entry_point_fields(entry_point: str) -> list[str]:
    """The RunConfig fields an entry point takes: its CLI flags and its MLproject parameters."""
    return [name for name, field in RunConfig.model_fields.items()
            if entry_point in (field.json_schema_extra or {}).get("entry_points", RUN_ENTRY_POINTS)]


def _one_line(err: ValidationError, schema: type[BaseModel] = RunConfig,
              listing: str = "`medvlm params` lists every parameter") -> str:
    first = err.errors()[0]
    if not first["loc"]:  # a whole-config rule such as task x strategy: its message names the parameters
        return str(first["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, schema.model_fields, n=1) if len(first["loc"]) == 1 else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown parameter '{key}'{hint}; {listing}"
    if first["type"] == "missing":
        return f"missing parameter '{key}': pass it as -P {key}=... or --{key.replace('_', '-')} ..."
    return f"invalid parameter {key}={first.get('input')!r}: {first['msg']}"


def validated(schema: type[SchemaT], data: dict[str, Any], listing: str) -> SchemaT:
    """`schema(**data)` for the other schemas (study specs), failing with RunConfig's one-line wording."""
    try:
        return schema(**data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, schema, listing)) from None


def load_yaml(path: str | os.PathLike, flag: str = "config") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} file not found: {p}; pass an existing YAML file as {flag}=PATH")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag} file {p} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} file {p} must hold a mapping of parameter: value")
    return data


def build_config(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> RunConfig:
    """Merge base (a spec cell), the YAML file named by `config`, then explicit overrides.

    Empty-string overrides mean "not given" so MLproject defaults of "" fall through.
    """
    given = {k: v for k, v in overrides.items() if v is not None and v != ""}
    merged: dict[str, Any] = dict(base or {})
    config_file = given.pop("config", None)
    if config_file:
        merged.update(load_yaml(config_file))
    merged.update(given)
    try:
        return RunConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
