"""Reports: the papers' tables and "medical minus general" gaps from tracked runs, with bootstrap
intervals, paired tests and a recommendation; logged as a report run and printed.

`run_report(cfg)` is the `report` command; `build_report(client, selection, cfg)` assembles the
report from selected runs without logging anything. (A module of its own, not the package file:
the CLI reads `medvlm.report.config` for `--help` without loading what a report needs.)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from medvlm.errors import ConfigError
from medvlm.names import REPORT_RUNS, REPORT_UNFINISHED_RUNS, bare
from medvlm.report import plots
from medvlm.report.cells import RunSamples, Uncertainty, build_cells
from medvlm.report.config import ReportConfig
from medvlm.report.recommend import recommendations
from medvlm.report.render import Report, Section, write
from medvlm.report.select import RunRecord, Selection, select_runs, study_progress
from medvlm.report.tables import (Grid, Missing, ablation_table, comparisons_table, finetune_tables, gap_data,
                                  gap_table, stability_table, stds, zero_shot_tables)
from medvlm.tracking.figures import figure_path
from medvlm.tracking.session import ensure_tracking, provenance_tags, resolve_experiment

REPORT_TAG = "medvlm.report"


def _header(selection: Selection, cfg: ReportConfig, redrawn: int) -> list[str]:
    level = f"{100 * cfg.confidence:g}%"
    redraw = f"; {redrawn} resamples were redrawn because a metric was undefined on them" if redrawn else ""
    return [
        f"Runs: {len(selection.runs)} finished runs from {selection.description}"
        + (f"; {len(selection.unfinished)} not finished (listed under Missing)." if selection.unfinished else "."),
        "",
        f"Uncertainty: {level} percentile bootstrap intervals over test samples ({cfg.resamples} resamples, seed "
        f"{cfg.seed}{redraw}), recomputed from each run's logged per-sample predictions with the experiment's "
        "metric code. Paired differences resample the same test samples for both sides; p is two-sided, "
        "min(1, 2·min((1+#{d≤0})/(B+1), (1+#{d≥0})/(B+1))), so identical predictions give p = 1. A cell with "
        "several runs shows mean ± std (n) and a two-level bootstrap that resamples runs too. Retrieval runs log "
        "no per-query ranks, so retrieval numbers carry no interval.",
        "",
        "Cells: a cell pools every selected run of its model, strategy, test set and training fraction (seeds, "
        "perturbed stability trials, repeats); pass study= to keep studies apart. The ablation section uses the "
        "ablation studies' runs (else any runs at several fractions), the stability section the stability studies' runs.",
        "",
        "ID/OOD: whether the model's pre-training modality (zoo) covers the dataset's modality; ? where either is "
        "unknown. Missing cells show —.",
    ]


def build_report(client: MlflowClient, selection: Selection, cfg: ReportConfig) -> Report:

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per table read is noise
    runs = selection.runs
    samples = RunSamples.of(client, runs, cfg.resamples, cfg.seed, cfg.workers)
    unc = Uncertainty(samples, cfg.confidence)
    grid = Grid([c for c in build_cells(runs) if c.train_fraction == 1.0])
    missing = Missing()
    figures: dict[str, object] = {}
    sections = [
        Section("Recommendation", [t for t in [recommendations(grid, unc)] if t]),
        Section("Zero-shot", zero_shot_tables(grid, unc, missing)),
        Section("Models × strategies", finetune_tables(grid, unc, missing)),
        Section("Paired comparisons", [t for t in [comparisons_table(grid, unc)] if t]),
    ]
    gaps = gap_data(grid, unc)
    heatmaps = plots.gap_heatmaps(gaps, cfg.figure_format)
    figures.update(heatmaps)
    sections.append(Section("Medical minus general", [t for t in [gap_table(gaps)] if t], list(heatmaps),
                            [] if heatmaps else ["No gap: it needs runs of a medical and a general zoo model on the "
                                                 "same test set (local-dir models have no domain)."]))
    ablation = ablation_table(build_cells([r for r in runs if r.study_kind == "ablation"] or runs), unc, missing)
    if ablation is not None:
        curve = figure_path("plots/ablation_curve", cfg.figure_format)
        figures[curve] = plots.ablation_curve(ablation.data)
        sections.append(Section("Training-data ablation", [ablation], [curve]))
    stability_cells = build_cells([r for r in runs if r.study_kind == "stability"])
    stability = stability_table(stability_cells, unc)
    if stability is not None:
        spread = stds(stability_cells)
        names = []
        for metric, part in spread.groupby("metric"):
            names.append(figure_path(f"plots/stability_std_{bare(metric)}", cfg.figure_format))
            figures[names[-1]] = plots.stability_plot(part)
        sections.append(Section("Stability", [stability], names))
    sections.append(Section("Warnings", lines=[f"- {r.name} ({r.run_id}): {w}" for r in runs for w in r.warnings]))
    sections.append(Section("Missing", lines=_missing_lines(client, selection, missing.cells, samples.missing)))
    sections = [s for s in sections if s.tables or s.lines or s.figures]
    redrawn = sum(samples.redrawn.values())
    return Report("medvlm report", _header(selection, cfg, redrawn), sections, figures)


def _missing_lines(client: MlflowClient, selection: Selection, cells: list[str], no_samples: dict[str, str]) -> list[str]:
    lines = []
    if cells:
        lines.append("Cells of the expected grid (every model × strategy × test set present in a task) with no finished run:\n")
        lines += [f"- {c}" for c in cells] + [""]
    progress = study_progress(client, selection.runs + selection.unfinished)
    if selection.unfinished or progress:
        lines.append("Runs not finished, so not reported:\n")
        lines += [f"- {r.name} ({r.run_id}): {r.status}" for r in selection.unfinished]
        lines += [f"- {p}" for p in progress] + [""]
    if no_samples:
        names = {r.run_id: r.name for r in selection.runs}
        lines.append("Runs without usable per-sample data (their numbers are shown without interval):\n")
        lines += [f"- {names[run_id]} ({run_id}): {why}" for run_id, why in no_samples.items()]
    return lines or ["Nothing: every expected cell has a finished run."]


def _log_params(run_id: str, cfg: ReportConfig) -> None:
    """The resolved parameters, without clobbering the -P values `mlflow run` already logged."""
    logged = mlflow.get_run(run_id).data.params
    flat = {k: (",".join(v) if isinstance(v, list) else ",".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict)
                else str(v)) for k, v in cfg.model_dump().items()}
    mlflow.log_params({k: v for k, v in flat.items() if k not in logged})


def run_report(cfg: ReportConfig) -> str:
    """Select runs, build the report, log it as a report run (the `mlflow run` run when there is one), print it.

    With no experiment named, it reads and logs to the experiment runs land in by default
    (`resolve_experiment`), so a report sees the `medvlm` and the `mlflow run` runs alike.
    """
    ensure_tracking()
    experiment, project_run = resolve_experiment(cfg.experiment[0] if cfg.experiment else "")
    cfg = cfg if cfg.experiment else cfg.model_copy(update={"experiment": [experiment]})
    client = MlflowClient()
    selection = select_runs(client, cfg)
    if not selection.runs:
        raise ConfigError(f"no finished medvlm runs match ({selection.description}) in {mlflow.get_tracking_uri()}; "
                          "check experiment=, study=, tags= and filter=")
    report = build_report(client, selection, cfg)
    if project_run is None:
        mlflow.set_experiment(experiment)
    name = f"report · {selection.description}"[:250]
    with mlflow.start_run(run_id=project_run, run_name=None if project_run else name) as run:
        mlflow.set_tags({REPORT_TAG: "true", "mlflow.runName": name, **provenance_tags()})
        _log_params(run.info.run_id, cfg)
        mlflow.log_metrics({REPORT_RUNS: len(selection.runs), REPORT_UNFINISHED_RUNS: len(selection.unfinished)})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(cfg.output).expanduser() if cfg.output else Path(tmp)
            markdown = write(report, folder)
            mlflow.log_artifacts(str(folder))
    print(markdown)
    where = f"output folder {folder.resolve()}; " if cfg.output else ""
    print(f"medvlm: report run {run.info.run_id} in experiment '{experiment}' ({where}artifacts {run.info.artifact_uri})",
          file=sys.stderr)
    return markdown


__all__ = ["Report", "ReportConfig", "RunRecord", "build_report", "run_report"]
