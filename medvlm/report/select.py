"""Picking the runs a report reads: by experiment, tags, study (or its spec), parent run and filter.

A run counts when it carries medvlm's run tags (`medvlm.task`, ...) and is not a study's parent
run; FINISHED runs are reported, runs in any other state are listed as not finished. Each run
becomes a `RunRecord` with what the tables group by.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from medvlm.catalog import TASKS
from medvlm.config import RunConfig
from medvlm.errors import ConfigError
from medvlm.network import clipped
from medvlm.report.config import ReportConfig
from medvlm.studies.spec import load_study_config
from medvlm.names import TEST, in_group
from medvlm.tracking.session import WARNING_TAG_PREFIX

# Parameters that change which test samples a run is scored on, shown in the test-set name
# when runs of one dataset differ in them (retrieval subsets always are: they are the paper's columns).
TESTSET_PARAMS = {name: task.test_set_params for name, task in TASKS.items()}
ALWAYS_SHOWN = {"subset"}


@dataclass(frozen=True)
class RunRecord:
    """One tracked run, as the report sees it."""

    run_id: str
    experiment_id: str
    status: str
    name: str
    task: str
    model: str
    domain: str
    dataset: str
    strategy: str
    train_fraction: float
    variant: str
    study: str
    study_kind: str
    parent: str
    trial: int
    start_time: int
    params: dict[str, str] = field(repr=False)
    metrics: dict[str, float] = field(repr=False)
    testset: str = ""
    warnings: tuple[str, ...] = ()  # the run's medvlm.warning.* tags, shown in the report


@dataclass
class Selection:
    """The runs a report reads, what selected them, and the runs it left out as not finished."""

    runs: list[RunRecord]
    unfinished: list[RunRecord]
    description: str


def experiment_ids(client: MlflowClient, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise ConfigError(f"no MLflow experiment named '{name}' (experiments: {known}); pass experiment=NAME[,NAME]")
        ids.append(experiment.experiment_id)
    return ids


def study_name(spec: str) -> str:
    """The study a spec file runs (its `name`, else the file name), as the study commands name it."""
    return load_study_config("sweep", spec, {}).name


def _variant(group: str, task: str) -> str:
    """The study group's axes beyond model, dataset, strategy, fraction and test-set params."""
    hidden = ("train_fraction=", *(f"{p}=" for p in TESTSET_PARAMS.get(task, ())))
    return " · ".join(p for p in group.split(" · ")[3:] if not p.startswith(hidden))


def _params(run: Run) -> dict[str, str]:
    """The run's params, with what `mlflow run` logs for a parameter not given ('' or "''") read as its default."""
    given = {k: v for k, v in run.data.params.items() if v not in ("", "''")}
    defaults = {k: str(f.default) for k, f in RunConfig.model_fields.items()
                if not f.is_required() and f.default_factory is None}
    return {**defaults, **given}


def record(run: Run) -> RunRecord:
    tags, params = run.data.tags, _params(run)
    task = tags["medvlm.task"]
    return RunRecord(
        run_id=run.info.run_id, experiment_id=run.info.experiment_id, status=run.info.status,
        name=tags.get("mlflow.runName", run.info.run_id), task=task, model=tags.get("medvlm.model", ""),
        domain=tags.get("medvlm.domain", "unknown"), dataset=tags.get("medvlm.dataset", ""),
        strategy=tags.get("medvlm.strategy", ""), train_fraction=float(params.get("train_fraction", 1.0)),
        variant=_variant(tags.get("medvlm.group", ""), task), study=tags.get("medvlm.study", ""),
        study_kind=tags.get("medvlm.study_kind", ""), parent=tags.get("mlflow.parentRunId", ""),
        trial=int(tags.get("medvlm.trial", -1)), start_time=run.info.start_time or 0, params=dict(params),
        metrics={k: v for k, v in run.data.metrics.items() if in_group(k, TEST)},
        warnings=tuple(v for k, v in sorted(tags.items()) if k.startswith(WARNING_TAG_PREFIX)))


def with_testsets(runs: list[RunRecord]) -> list[RunRecord]:
    """Name each run's test set: the dataset, plus the test-set params that differ between its runs."""
    values: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in runs:
        for p in TESTSET_PARAMS.get(r.task, ()):
            values[(r.task, r.dataset, p)].add(r.params.get(p, ""))
    named = []
    for r in runs:
        shown = [r.params.get(p, "") if p in ALWAYS_SHOWN else f"{p}={r.params.get(p, '')}"
                 for p in TESTSET_PARAMS.get(r.task, ()) if p in ALWAYS_SHOWN or len(values[(r.task, r.dataset, p)]) > 1]
        named.append(replace(r, testset="/".join([r.dataset, *shown])))
    return named


def _filter_string(cfg: ReportConfig) -> str:
    clauses = [f"tags.`{key}` = '{value}'" for key, value in cfg.tags.items()]
    if cfg.filter.strip():
        clauses.append(cfg.filter.strip())
    return " and ".join(clauses)


def select_runs(client: MlflowClient, cfg: ReportConfig) -> Selection:
    """Every medvlm run the config selects, oldest first."""
    studies = set(cfg.study) | ({study_name(cfg.spec)} if cfg.spec else set())
    parents = set(cfg.parent_run)
    query = _filter_string(cfg)
    found: list[Run] = []
    for experiment in experiment_ids(client, cfg.experiment):
        token = None
        while True:
            try:
                page = client.search_runs([experiment], filter_string=query, max_results=1000, page_token=token)
            except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a bad filter string
                raise ConfigError(f"invalid filter '{query}' ({clipped(str(exc), 200)}); use MLflow search "
                                  "syntax, e.g. filter=\"params.size = '28'\"") from None
            found += page
            token = page.token
            if not token:
                break
    records = [record(run) for run in found
               if "medvlm.task" in run.data.tags and run.data.tags.get("medvlm.study_role") != "parent"
               and (not studies or run.data.tags.get("medvlm.study") in studies)
               and (not parents or run.data.tags.get("mlflow.parentRunId") in parents)]
    records = sorted(records, key=lambda r: (r.start_time, r.run_id))
    finished = with_testsets([r for r in records if r.status == "FINISHED"])
    unfinished = with_testsets([r for r in records if r.status != "FINISHED"])
    what = [f"experiment {', '.join(cfg.experiment)}"]
    what += [f"study {', '.join(sorted(studies))}"] if studies else []
    what += [f"parent run {', '.join(sorted(parents))}"] if parents else []
    what += [f"filter {query}"] if query else []
    return Selection(finished, unfinished, "; ".join(what))


def study_progress(client: MlflowClient, runs: list[RunRecord]) -> list[str]:
    """For each study parent the runs belong to: how many of its planned trials have a finished run."""
    lines = []
    for parent in sorted({r.parent for r in runs if r.parent}):
        try:
            params = client.get_run(parent).data.params
        except Exception:  # noqa: BLE001 - a parent deleted since; its children still count as runs
            continue
        planned = params.get("study.trials_planned")
        if planned is None:
            continue
        finished = sum(r.parent == parent and r.status == "FINISHED" for r in runs)
        if finished < int(planned):
            study = next(r.study for r in runs if r.parent == parent)
            lines.append(f"study '{study}' (parent run {parent}): {finished} of {planned} planned runs finished")
    return lines
