"""Stability studies: N runs per strategy with slightly perturbed hyperparameters.

The perturbations are the first N points of a scrambled Halton sequence from Optuna's
`QMCSampler` (seeded), mapped through each key's `Perturbation`: a low-discrepancy set covers
the space evenly even for N = 7-9, where random draws cluster. Every cell gets the *same* N
points relative to its own base values (common random numbers), so strategies are compared
on identical perturbations.

The points are computed up front and enqueued, not sampled by workers: `QMCSampler` numbers
its samples through a non-atomic counter in the storage ("only ensures that each sample_id is
sampled at least once"), so concurrent workers could draw the same point twice.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from medvlm.config import RunConfig, build_config
from medvlm.errors import ConfigError
from medvlm.studies.spec import DEFAULT_SPACE, Cell, Perturbation, PlannedTrial, StudyConfig, trials_of


def unit_points(names: list[str], n: int, seed: int) -> list[dict[str, float]]:
    """The first n points in [0, 1)^len(names) of Optuna's seeded scrambled-Halton QMC sampler."""
    space = {name: FloatDistribution(0.0, 1.0) for name in names}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(qmc_type="halton", scramble=True, seed=seed)
        study = optuna.create_study(sampler=sampler, storage=optuna.storages.InMemoryStorage())
        probe = create_trial(state=TrialState.WAITING)
        return [sampler.sample_relative(study, probe, space) for _ in range(n)]


def is_integer(name: str) -> bool:
    return RunConfig.model_fields[name].annotation is int


def perturbed_trials(study: StudyConfig, cells: list[Cell], cell_dist: Any) -> list[PlannedTrial]:
    """`trials` perturbed trials per cell (the first N points of one sequence, so cells with equal N share
    their perturbations); distinct parameters within each cell."""
    space = study.space or {k: Perturbation(**v) for k, v in DEFAULT_SPACE.items()}
    names = sorted(space)
    points = unit_points(names, max(trials_of(study, cell.config) for cell in cells), study.sampler_seed)
    plan = []
    for cell in cells:
        seen: set[tuple] = set()
        n = trials_of(study, cell.config)
        for u in points[:n]:
            values, dists = {}, {"cell": cell_dist}
            for name in names:
                base = getattr(cell.config, name)
                values[name] = space[name].value(u[name], base, is_integer(name))
                dists[name] = space[name].distribution(base, is_integer(name))
            key = tuple(values.values())
            if key in seen:
                raise ConfigError(f"space {dict(space)} gives fewer than trials={n} distinct settings for "
                                  f"{cell.label}; widen it or lower trials")
            seen.add(key)
            try:
                cfg = build_config({}, base={**cell.values, **values})
            except ConfigError as exc:
                raise ConfigError(f"space: cell {cell.index + 1} ({cell.label}) with {values}: {exc}") from None
            plan.append(PlannedTrial(cell, {"cell": cell.index, **values}, dists, cfg))
    return plan


def std_figure(table: pd.DataFrame, metric: str):
    """The paper's Figure 2: std of `metric` across runs, per model (x) and strategy (bars), one panel per dataset.
    Model names are wrapped whole, so two models that share a long prefix or suffix still read apart."""
    from medvlm.tracking.figures import new_figure, wrap  # lazy: matplotlib loads only when a figure is drawn

    rows = table[table["metric"] == metric]
    datasets = sorted(rows["dataset"].unique())
    strategies = sorted(rows["strategy"].unique())
    widest = max(rows["model"].nunique(), 1)
    fig, axes = new_figure(max(5.0, 1.0 + 1.3 * widest) * len(datasets), 4.2, 1, len(datasets), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = rows[rows["dataset"] == dataset]
        models = sorted(part["model"].unique())
        width = min(0.8 / max(len(strategies), 1), 0.4)
        for j, strategy in enumerate(strategies):
            std = [part[(part["model"] == m) & (part["strategy"] == strategy)]["std"].mean() for m in models]
            bars = ax.bar(np.arange(len(models)) + j * width, np.nan_to_num(std), width, label=strategy)
            ax.bar_label(bars, fmt="%.3f", fontsize=6)
        ax.set_xlim(-0.7, len(models) - 0.3 + width * (len(strategies) - 1))  # one bar is a bar, not the whole panel
        ax.set_xticks(np.arange(len(models)) + width * (len(strategies) - 1) / 2, [wrap(m, 18) for m in models],
                      fontsize=7)
        ax.set(title=dataset, ylabel=f"std of {metric}")
    axes[0][0].legend(fontsize=7, title="strategy", title_fontsize=7)
    fig.suptitle(f"std of {metric} across the runs of each model and strategy")
    return fig
