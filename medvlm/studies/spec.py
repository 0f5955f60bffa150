"""Study specs: a YAML file (or a few flags) -> the exact list of experiments a study runs.

A spec's top-level keys and the study flags are one pydantic schema, `StudyConfig`, validated
with the same one-line errors as `RunConfig`. Its cells are RunConfigs:

    defaults  (RunConfig keys shared by every cell; -P/--flags set defaults too)
    grid      (a list of blocks; each block is a cartesian product of RunConfig axes)
    overrides (match: {key: value or [values]} -> set: {key: value}), applied in order
    exclude   (drop the cells that match)

`ablation` crosses every block with `train_fraction: fractions`; `strategies` (a flag) replaces
the strategy axis; `stability` runs `trials` perturbed copies of each cell (`space`; `trials` may
be a count per task, as the paper's Figure 2 ran 7 VQA and 9 retrieval runs). Everything
is expanded and validated (RunConfig values, model names against the zoo, unused overrides,
duplicated cells) before a study touches Optuna or MLflow.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from medvlm.catalog import STRATEGY_KINDS
from medvlm.config import CommaList, RunConfig, Strategy, Task, build_config, load_yaml, validated
from medvlm.errors import ConfigError, MedvlmError

Kind = Literal["sweep", "stability", "ablation"]
DEFAULT_FRACTIONS = [0.05, 0.1, 0.25, 0.5, 1.0]
DEFAULT_SPACE = {"lr": {"factor": 2.0}, "seed": {"low": 0, "high": 9999}}
NAMED_KEYS = ("model", "dataset", "strategy")
REPLICATE_KEYS = {"seed"}
# Per-machine and display settings: not part of a study's identity, so workers with other paths can join.
MACHINE_KEYS = {"data_root", "checkpoint_dir", "checkpoint_every", "num_workers", "run_name"}


def default_storage() -> str:
    """`MEDVLM_OPTUNA_STORAGE`, else an Optuna SQLite file beside (not inside) MLflow's store."""
    return os.environ.get("MEDVLM_OPTUNA_STORAGE") or "sqlite:///optuna.db"


class Perturbation(BaseModel):
    """How one RunConfig key varies around a cell's value, from a point u in [0, 1).

    factor: log-uniform in [base/factor, base*factor]; low/high: uniform between them (log-uniform
    with `log: true`; for int keys every integer low..high equally likely); choices: one of a list.
    """

    model_config = ConfigDict(extra="forbid")

    factor: float | None = Field(None, gt=1)
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> Perturbation:
        ranged = self.low is not None or self.high is not None
        if (self.factor is not None) + ranged + (self.choices is not None) != 1:
            raise ValueError("give exactly one of factor, low+high or choices")
        if ranged and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError("needs low < high")
        if self.log and (not ranged or self.low <= 0):
            raise ValueError("log needs low > 0")
        return self

    def value(self, u: float, base: Any, integer: bool) -> Any:
        if self.choices is not None:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        low, high = self.bounds(base, integer)
        if self.factor is not None or self.log:
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            value = round(value) if integer else value
        elif integer:
            value = low + math.floor(u * (high - low + 1))
        else:
            value = low + u * (high - low)
        return min(max(value, low), high)

    def bounds(self, base: Any, integer: bool) -> tuple[float, float]:
        if self.factor is None:
            return (int(self.low), int(self.high)) if integer else (self.low, self.high)
        if not isinstance(base, (int, float)) or base <= 0:
            raise ConfigError(f"space: factor needs a positive base value (got {base!r}); use low/high or choices")
        low, high = base / self.factor, base * self.factor
        return (max(1, math.ceil(low)), max(1, math.floor(high))) if integer else (low, high)

    def distribution(self, base: Any, integer: bool):
        """The Optuna distribution a trial's value is recorded under."""
        # lazy: the CLI reads this module for its flags; Optuna loads when a study runs
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        low, high = self.bounds(base, integer)
        log = self.factor is not None or self.log
        return IntDistribution(int(low), int(high), log=log) if integer else FloatDistribution(low, high, log=log)


class Override(BaseModel):
    """Per-cell settings: cells whose values match every `match` key get `set`."""

    model_config = ConfigDict(extra="forbid")

    match: dict[str, Any] = Field(min_length=1)
    set: dict[str, Any] = Field(min_length=1)


Axis = Annotated[list[Any], Field(min_length=1)]


class StudyConfig(BaseModel):
    """One study: what it runs (the spec's keys) and how it runs (flags)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = "sweep"
    name: str = Field("", description="study name (Optuna study and MLflow tag); default: the spec's file name")
    defaults: dict[str, Any] = Field(default_factory=dict)
    grid: Annotated[list[dict[str, Axis]], Field(min_length=1)] = Field(default_factory=lambda: [{}])
    overrides: list[Override] = Field(default_factory=list)
    exclude: list[Annotated[dict[str, Any], Field(min_length=1)]] = Field(default_factory=list)
    space: dict[str, Perturbation] = Field(default_factory=dict)
    trials: Annotated[int, Field(ge=2)] | dict[Task, Annotated[int, Field(ge=2)]] = Field(
        9, description="stability: perturbed trials per strategy (cell); in a spec also per task, e.g. {vqa: 7, retrieval: 9}")
    fractions: Annotated[CommaList[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_FRACTIONS), description="ablation: training-data fractions")
    strategies: CommaList[Strategy] = Field(default_factory=list, description="strategies to compare (replaces the grid's strategy axis)")
    sampler_seed: int = Field(0, description="stability: seed of the QMC (Halton) perturbation sampler")
    storage: str = Field(default_factory=default_storage, description="Optuna storage: sqlite:///optuna.db, or postgresql://... for many workers")
    heartbeat_interval: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(120, ge=2, description="seconds without heartbeat after which a trial counts as killed and is retried")
    max_retry: int = Field(3, ge=0, description="retries of a killed trial")
    max_same_failures: int = Field(3, ge=0, description="stop the study when this many trials in a row fail with the same "
                                   "error, leaving the rest queued (0 = never stop)")
    register_best: bool = Field(False, description="at the end, register the adapter of the best trial (by validation "
                                "metric) as one Model Registry version per model x dataset x task; trials themselves "
                                "never register")
    dry_run: bool = Field(False, description="print the experiments the study would run, and their count; run nothing")
    summarize_only: bool = Field(False, description="only (re)write the parent run's summary from the finished child runs")

    @field_validator("grid", mode="before")
    @classmethod
    def _one_block(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if self.grace_period <= 2 * self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must exceed twice heartbeat_interval "
                             f"({self.heartbeat_interval}): one late beat on a busy machine must not retry a live trial")
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions {self.fractions} has duplicates")
        return self


STUDY_FLAGS = ("trials", "fractions", "strategies", "sampler_seed", "storage", "heartbeat_interval", "grace_period",
               "max_retry", "max_same_failures", "register_best", "dry_run", "summarize_only")
SPEC_KEYS = "valid spec keys: " + ", ".join(StudyConfig.model_fields)


def load_study_config(command: Kind, spec: str | None, flags: dict[str, Any]) -> StudyConfig:
    """The spec file (if any) with the study flags on top; `sweep` runs a spec of any kind."""
    data = load_yaml(spec, flag="spec") if spec else {}
    declared = data.get("kind")
    if command != "sweep" and declared not in (None, command):
        raise ConfigError(f"spec {spec} is a '{declared}' spec; run it with `medvlm {declared} --spec {spec}` or `medvlm sweep --spec {spec}`")
    data["kind"] = declared or command
    data.update({k: v for k, v in flags.items() if v is not None and v != ""})
    study = validated(StudyConfig, data, SPEC_KEYS)
    if not study.name:
        study.name = Path(spec).stem if spec else ""
    return study


def trials_of(study: StudyConfig, cfg: RunConfig) -> int:
    """How many perturbed trials a stability cell runs."""
    return study.trials[cfg.task] if isinstance(study.trials, dict) else study.trials


@dataclass(frozen=True)
class Cell:
    """One experiment setting of a study. Trials of the same `group` are replicates (seeds, perturbations)."""

    index: int
    label: str
    group: str
    values: dict[str, Any]
    config: RunConfig


@dataclass(frozen=True)
class PlannedTrial:
    """One experiment of a study: its Optuna params (`cell` plus any perturbed keys) and its config."""

    cell: Cell
    params: dict[str, Any]
    distributions: dict[str, Any]
    config: RunConfig

    @property
    def label(self) -> str:
        return f"{self.cell.label}  {perturbed(self.params)}".rstrip()


def perturbed(params: dict[str, Any]) -> str:
    """A trial's own values beyond its cell (`lr=1.2e-05 seed=3`): what tells study children apart."""
    return " ".join(f"{k}={_short(v)}" for k, v in params.items() if k != "cell")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _matches(match: dict[str, Any], cfg: RunConfig) -> bool:
    return all(getattr(cfg, k) in (v if isinstance(v, list) else [v]) for k, v in match.items())


RunKeys = create_model("RunKeys", __config__=ConfigDict(extra="forbid"),
                       **{name: (Any, None) for name in RunConfig.model_fields})


def _check_keys(keys: dict[str, Any], where: str) -> None:
    """Only RunConfig names, with RunConfig's wording (a typo in a match would silently match nothing)."""
    try:
        validated(RunKeys, dict(keys), "`medvlm params` lists every parameter")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _label(cfg: RunConfig, axes: list[str], skip: set[str] = frozenset()) -> str:
    parts = [str(getattr(cfg, k)) for k in NAMED_KEYS]
    parts += [f"{k}={getattr(cfg, k)}" for k in axes if k not in NAMED_KEYS and k != "task" and k not in skip]
    return " · ".join(parts)


def default_name(study: StudyConfig, base: dict[str, Any]) -> str:
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", str(base.get(k, "")))[-40:] for k in ("model", "dataset"))
    return f"{study.kind}-{slug}"


def _blocks(study: StudyConfig, flags: dict[str, Any]) -> list[dict[str, list[Any]]]:
    """The grid blocks with the study kind's own axes added (strategies, ablation fractions)."""
    blocks = []
    for i, block in enumerate(study.grid):
        _check_keys(block, f"grid block {i + 1}")
        block = dict(block)
        clash = sorted(set(block) & set(flags))
        if clash:
            raise ConfigError(f"--{clash[0]} is a grid axis of this study; change the spec's grid instead of the flag")
        if study.strategies:
            block["strategy"] = list(study.strategies)
        if study.kind == "ablation":
            if "train_fraction" in block:
                raise ConfigError("ablation: give the fractions with `fractions`, not as a train_fraction grid axis")
            block["train_fraction"] = list(study.fractions)
        blocks.append(block)
    return blocks


def expand_cells(study: StudyConfig, run_flags: dict[str, Any]) -> list[Cell]:
    """Every cell of the study as a validated RunConfig, in spec order. Raises ConfigError, one line.

    RunConfig flags set the defaults (over the spec's); grid axes and overrides still vary their keys,
    and a flag naming a grid axis is an error rather than silently ignored.
    """
    flags = {k: v for k, v in run_flags.items() if v is not None and v != ""}
    config_file = flags.pop("config", None)
    study.name = flags.pop("study", None) or study.name
    defaults = {**study.defaults, **(load_yaml(config_file) if config_file else {}), **flags}
    _check_keys(defaults, "defaults")
    blocks = _blocks(study, flags)
    for i, o in enumerate(study.overrides):
        _check_keys({**o.match, **o.set}, f"override {i + 1}")
    for i, e in enumerate(study.exclude):
        _check_keys(e, f"exclude {i + 1}")
    if study.kind == "stability":
        _check_keys(study.space, "space")
        axes = sorted(set(study.space) & {k for block in blocks for k in block})
        if axes:
            raise ConfigError(f"space: '{axes[0]}' is both a grid axis and perturbed; keep it in one place")
    study.name = study.name or default_name(study, defaults)

    cells: list[Cell] = []
    used_overrides, used_excludes, seen = set(), set(), {}
    for block in blocks:
        axes = list(block)
        for combo in itertools.product(*(block[k] for k in axes)):
            values = {**defaults, **dict(zip(axes, combo)), "study": study.name}
            where = f"cell {len(cells) + 1} ({', '.join(f'{k}={v}' for k, v in zip(axes, combo)) or 'defaults'})"
            cfg = _build(values, where)
            for i, o in enumerate(study.overrides):
                if _matches(o.match, cfg):
                    used_overrides.add(i)
                    values.update(o.set)
                    cfg = _build(values, where)
            dropped = [i for i, e in enumerate(study.exclude) if _matches(e, cfg)]
            used_excludes.update(dropped)
            if dropped:
                continue
            identity = identity_of(cfg)
            if identity in seen:
                raise ConfigError(f"{where} repeats cell {seen[identity] + 1}; remove the duplicate from the grid")
            seen[identity] = len(cells)
            cells.append(Cell(len(cells), _label(cfg, axes), _label(cfg, axes, REPLICATE_KEYS), values, cfg))
    unused = sorted(set(range(len(study.overrides))) - used_overrides)
    if unused:
        raise ConfigError(f"override {unused[0] + 1} (match {study.overrides[unused[0]].match}) matches no cell; fix its values")
    unused = sorted(set(range(len(study.exclude))) - used_excludes)
    if unused:
        raise ConfigError(f"exclude {unused[0] + 1} ({study.exclude[unused[0]]}) matches no cell; fix its values")
    if not cells:
        raise ConfigError("the spec leaves no experiment: every cell is excluded")
    _check_cells(study, cells)
    return cells


def _build(values: dict[str, Any], where: str) -> RunConfig:
    try:
        return build_config({}, base=values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def identity_of(cfg: RunConfig) -> tuple[tuple[str, str], ...]:
    """What makes two runs the same experiment, wherever they run."""
    return tuple(sorted((k, str(v)) for k, v in cfg.resolved().items() if k not in MACHINE_KEYS))


def _check_cells(study: StudyConfig, cells: list[Cell]) -> None:
    """What a RunConfig cannot know alone: zoo names, and strategies the study kind cannot use."""
    from medvlm.zoo.factory import resolve  # lazy: the zoo loads torch; a spec without models never needs it

    if study.register_best and not any(STRATEGY_KINDS[c.config.strategy].produces_adapter and c.config.register_adapter
                                       for c in cells):
        raise ConfigError("register_best registers a trial's adapter, and no cell of this study makes one (strategy "
                          "lora or mlp, with register_adapter true); add such a cell or drop register_best")
    checked: set[str] = set()
    for cell in cells:
        cfg = cell.config
        if cfg.model not in checked:
            try:
                resolve(cfg.model)
            except MedvlmError as exc:
                raise ConfigError(f"cell {cell.index + 1} ({cell.label}): {exc}") from None
            checked.add(cfg.model)
        if study.kind == "stability" and isinstance(study.trials, dict) and cfg.task not in study.trials:
            raise ConfigError(f"cell {cell.index + 1} ({cell.label}): trials gives no count for task {cfg.task}; "
                              f"add {cfg.task}: N to trials")
        if study.kind in ("stability", "ablation") and not STRATEGY_KINDS[cfg.strategy].trains:
            raise ConfigError(f"cell {cell.index + 1} ({cell.label}): a {study.kind} study needs a training strategy and "
                              f"{cfg.strategy} does not train; pass strategies=partial,full,lora or set strategy")
