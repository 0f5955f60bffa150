"""The trials a study runs: one per cell (sweep, ablation) or `trials` perturbed copies (stability).

Every worker recomputes the plan from the spec and flags; its digest, stored with the Optuna
study, makes sure that workers and resumed runs all mean the same experiments.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from optuna.distributions import IntDistribution

from medvlm.catalog import STRATEGY_KINDS
from medvlm.config import RunConfig, build_config
from medvlm.studies.spec import Cell, PlannedTrial, StudyConfig, expand_cells, identity_of
from medvlm.studies.stability import perturbed_trials
from medvlm.zoo.entries import zoo_entries


def build_plan(study: StudyConfig, run_flags: dict[str, Any]) -> list[PlannedTrial]:
    """Expand and validate everything a study will run; nothing is started."""
    cells = expand_cells(study, run_flags)
    cell_dist = IntDistribution(0, len(cells) - 1)
    if study.kind == "stability":
        return perturbed_trials(study, cells, cell_dist)
    return [PlannedTrial(c, {"cell": c.index}, {"cell": cell_dist}, c.config) for c in cells]


def trial_config(cells: list[Cell], params: dict[str, Any]) -> RunConfig:
    """A trial's config from its Optuna params alone (so a retried trial needs nothing else)."""
    cell = cells[params["cell"]]
    return build_config({}, base={**cell.values, **{k: v for k, v in params.items() if k != "cell"}})


def plan_digest(plan: list[PlannedTrial]) -> str:
    payload = [[t.params, identity_of(t.config)] for t in plan]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(study: StudyConfig, plan: list[PlannedTrial]) -> str:
    """The dry-run listing: one numbered line per experiment with its resolved protocol, then the count."""
    width = len(str(len(plan)))
    lines = [f"study '{study.name}' ({study.kind}): {len(plan)} experiments"]
    lines += [f"  {i:>{width}}  {t.config.task:<14} {t.label}  |  {format_protocol(protocol(t.config))}"
              for i, t in enumerate(plan, 1)]
    lines.append(f"{len(plan)} experiments")
    return "\n".join(lines)


def head_of(cfg: RunConfig) -> str:
    """What sits on the encoders: the classifier head, nothing extra (retrieval) or the BAN fusion (VQA)."""
    if cfg.task == "classification":
        kind = STRATEGY_KINDS[cfg.strategy]  # a probe's head is linear; a trained encoder's is what `head` says
        return "linear" if kind.trains and (not kind.trains_encoder or cfg.head == "linear") else "prompt"
    return "none" if cfg.task == "retrieval" else "ban"


def protocol(cfg: RunConfig) -> dict[str, str]:
    """The training protocol a run resolves to: what a paper states, checked against it (README conformance)."""
    entry = zoo_entries().get(cfg.model)
    out = {"head": head_of(cfg)}
    if cfg.task == "classification":
        out["prompts"] = cfg.prompt_set
    if STRATEGY_KINDS[cfg.strategy].trains:
        out.update(optimizer=cfg.optimizer, lr=f"{cfg.lr:g}", wd=f"{cfg.weight_decay:g}", epochs=str(cfg.epochs),
                   patience=str(cfg.patience), batch=str(cfg.batch_size))
    out.update(precision=cfg.precision, image=str(entry.image_size if entry else "model"), seed=str(cfg.seed))
    if cfg.task == "classification":
        out["size"] = str(cfg.size)
    return out


def format_protocol(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())
