"""Running a study: Optuna is the shared, resumable work queue; MLflow holds the results.

- The first worker to create the Optuna study (creation is atomic in the storage) makes the
  MLflow parent run (the `mlflow run` project run when there is one), records its id in the
  study's user attrs and enqueues every planned trial with fixed params. Other workers wait for
  that and check that they planned the same trials (the plan digest).
- Workers claim WAITING trials with the storage's atomic WAITING->RUNNING switch, so no trial
  runs twice and a rerun only picks up what is left: completed trials are never rerun.
- A running trial beats a heartbeat; a trial whose worker died (kill -9, lost machine) goes
  stale after `grace_period`, is marked FAIL by the next worker that looks, its MLflow child is
  marked KILLED, and it is re-enqueued with the same params (at most `max_retry` times).
- A trial completes at most once (`Fence`): the worker tells Optuna COMPLETE before its MLflow
  child ends FINISHED, and only while it still owns the trial. A worker that was paused past
  `grace_period` finds its trial retried elsewhere; its child ends KILLED and counts nowhere.
  The summary counts only the child run that completed each trial. Transient database errors
  at tell are retried with backoff instead of killing the worker.
- A trial that fails for a real reason (a MedvlmError: bad config, NaN loss) is FAIL with its
  message in the `error` user attr, and the study goes on. A bug (any other exception) is FAIL
  too, and stops the worker with its traceback.
- Each trial is a child run nested under the parent by an explicit `mlflow.parentRunId` tag,
  so children from every machine land under the same parent (`start_run(nested=True)` only
  nests under a run active in the same process).
- The worker that finds nothing left queued or running writes the summary (`summary.py`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from medvlm.adapters.base import HIGHER_TAG, MODEL_TAG, NAME_TAG, STUDY_TAG, VALUE_TAG, register
from medvlm.errors import ConfigError, MedvlmError, Superseded, one_line
from medvlm.experiments.preflight import preflight
from medvlm.network import clipped
from medvlm.progress import log
from medvlm.studies.plan import build_plan, describe, plan_digest, trial_config
from medvlm.studies.spec import Kind, PlannedTrial, StudyConfig, load_study_config, perturbed
from medvlm.studies.summary import PRIMARY_METRIC, child_runs, format_summary, log_summary, summary_table
from medvlm.tracking.session import ensure_tracking, provenance_tags, resolve_experiment

PARENT_ATTR, EXPERIMENT_ATTR, DIGEST_ATTR, KIND_ATTR, READY_ATTR = (
    "mlflow_parent_run_id", "mlflow_experiment_id", "plan_digest", "kind", "ready")
RUN_ATTR = "mlflow_run_id"  # the child run that completed the trial
JOIN_TIMEOUT_S = 300.0
TRANSIENT_BUDGET_S = 300.0  # how long a database outage at tell/fail may last before the worker gives up
T = TypeVar("T")
SCHEMA_RACE_RETRIES = 5


@dataclass(frozen=True)
class Parent:
    run_id: str
    experiment_id: str


def run_study(command: Kind, run_flags: dict[str, Any], study_flags: dict[str, Any], spec: str | None) -> int:
    """The `ablation`, `stability` and `sweep` commands. Returns 0, or 1 when trials failed for good."""
    try:
        study_cfg = load_study_config(command, spec, study_flags)
        plan = build_plan(study_cfg, run_flags)
    except ConfigError as exc:
        raise ConfigError(f"spec {spec}: {exc}" if spec and not str(exc).startswith("spec ") else str(exc)) from None
    if study_cfg.dry_run:
        print(describe(study_cfg, plan))
    if not study_cfg.summarize_only:
        found = preflight(t.config for t in plan)  # every model and dataset located before anything starts
        if study_cfg.dry_run:
            print("\n".join(["found every model and dataset:", *[f"  {line}" for line in found]]))
    if study_cfg.dry_run:
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ensure_tracking()
    experiment, project_run = resolve_experiment(plan[0].config.experiment)  # consumes MLFLOW_RUN_ID: no trial resumes it
    storage = open_storage(study_cfg)
    study, parent = join_study(storage, study_cfg, plan, experiment, project_run)
    if project_run and project_run != parent.run_id:
        MlflowClient().set_tag(project_run, "medvlm.study_parent", parent.run_id)
    mlflow.set_experiment(experiment_id=parent.experiment_id)
    if not study_cfg.summarize_only:
        cells = list({t.cell.index: t.cell for t in plan}.values())
        work(study, storage, study_cfg, cells, parent)
    return finish(study, study_cfg, parent, plan[0].config.figure_format)


def storage_url(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 (a medvlm dependency) when psycopg is absent."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme) and importlib.util.find_spec("psycopg") is None:
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


def redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given, it holds no parsed password
        return url


def open_storage(cfg: StudyConfig):
    """The Optuna RDB storage with heartbeats and the kill handler."""
    url = storage_url(cfg.storage)
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=cfg.heartbeat_interval,
                                                  grace_period=cfg.grace_period,
                                                  heartbeat_stale_trial_callback=RetryKilled(cfg.max_retry))
        except SQLAlchemyError as exc:
            # Workers starting together on an empty database race to create Optuna's tables and
            # enum types; the losers see "already exists" and succeed once the winner is done.
            if "already exists" in str(exc) and attempt < SCHEMA_RACE_RETRIES:
                time.sleep(1.0 + attempt)
                continue
            error = exc
        except (ValueError, ImportError) as exc:
            error = exc
        reason = clipped(str(error), 200) or type(error).__name__
        raise ConfigError(f"cannot open the Optuna storage {redacted(url)} ({reason}); start the database "
                          f"or pass another storage=... (default sqlite:///optuna.db)") from None


class RetryKilled:
    """Optuna's heartbeat-stale callback: mark the dead trial's MLflow child KILLED, then re-enqueue the trial."""

    def __init__(self, max_retry: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.max_retry = max_retry

    def __call__(self, study, trial) -> None:
        parent = study.user_attrs.get(PARENT_ATTR)
        if parent:
            client = MlflowClient()
            for run_id in trial_runs(client, parent, [trial.number], status="RUNNING"):
                client.set_tag(run_id, "medvlm.error", "its worker stopped (no heartbeat); the trial is retried")
                client.set_terminated(run_id, "KILLED")
        retries = len(trial.system_attrs.get("retry_history", []))
        print(f"medvlm: trial {trial.number} lost its worker; "
              + ("re-enqueued" if retries < self.max_retry else f"not retried (max_retry={self.max_retry})"), file=sys.stderr)
        self.retry(study, trial)


def trial_runs(client: MlflowClient, parent_id: str, numbers: list[int], status: str) -> list[str]:
    """Child runs of `parent_id` for these trial numbers, in this status."""
    experiment = client.get_run(parent_id).info.experiment_id
    found = []
    for number in numbers:
        query = (f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`medvlm.trial` = '{number}' "
                 f"and attributes.status = '{status}'")
        found += [r.info.run_id for r in client.search_runs([experiment], filter_string=query)]
    return found


def join_study(storage, cfg: StudyConfig, plan: list[PlannedTrial], experiment: str, project_run: str | None):
    """Create the study and its parent run (first worker), or load it and check it is the same plan."""
    if cfg.summarize_only:
        try:
            study = optuna.load_study(study_name=cfg.name, storage=storage)
        except KeyError:
            raise ConfigError(f"no study '{cfg.name}' in {redacted(cfg.storage)}; check study= and storage=") from None
        return study, _check_joined(study, cfg, plan)
    try:
        study = optuna.create_study(storage=storage, study_name=cfg.name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.name, storage=storage)
        return study, _check_joined(study, cfg, plan)
    parent = create_parent(cfg, plan, experiment, project_run)
    for key, value in {PARENT_ATTR: parent.run_id, EXPERIMENT_ATTR: parent.experiment_id,
                       DIGEST_ATTR: plan_digest(plan), KIND_ATTR: cfg.kind}.items():
        study.set_user_attr(key, value)
    study.add_trials([optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=t.params,
                                                distributions=t.distributions,
                                                user_attrs={"label": t.label, "group": t.cell.group})
                      for t in plan])
    study.set_user_attr(READY_ATTR, True)
    return study, parent


def _check_joined(study, cfg: StudyConfig, plan: list[PlannedTrial]) -> Parent:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() > deadline:
            raise ConfigError(f"study '{cfg.name}' in {redacted(cfg.storage)} was created but never set up (its first "
                              f"worker stopped early); delete it (optuna delete-study --study-name {cfg.name} "
                              f"--storage URL) and rerun")
        time.sleep(1.0)
    attrs = study.user_attrs
    if attrs[DIGEST_ATTR] != plan_digest(plan) or attrs[KIND_ATTR] != cfg.kind:
        raise ConfigError(f"study '{cfg.name}' in {redacted(cfg.storage)} holds another plan ({attrs[KIND_ATTR]}, "
                          f"{attrs[DIGEST_ATTR]}) than this spec and these flags ({cfg.kind}, {plan_digest(plan)}); "
                          f"rerun with the original ones, or pass study=NEW_NAME for a new study")
    return Parent(attrs[PARENT_ATTR], attrs[EXPERIMENT_ATTR])


def create_parent(cfg: StudyConfig, plan: list[PlannedTrial], experiment: str, project_run: str | None) -> Parent:
    """The study's parent run: the `mlflow run` project run if there is one, else a new run in `experiment`."""
    client = MlflowClient()
    name = f"{cfg.kind} · {cfg.name}"
    if project_run:
        run = client.get_run(project_run)
    else:
        run = client.create_run(_experiment_id(client, experiment), run_name=name)
    run_id = run.info.run_id
    client.set_tag(run_id, "mlflow.runName", name)
    for key, value in {"medvlm.study": cfg.name, "medvlm.study_kind": cfg.kind, "medvlm.study_role": "parent",
                       **provenance_tags()}.items():
        client.set_tag(run_id, key, value)
    for key, value in {"study.kind": cfg.kind, "study.trials_planned": len(plan), "study.plan_digest": plan_digest(plan),
                       "study.storage": redacted(cfg.storage)}.items():
        client.log_param(run_id, key, value)
    client.log_dict(run_id, {**cfg.model_dump(mode="json"), "storage": redacted(cfg.storage)}, "study/study.json")
    client.log_text(run_id, describe(cfg, plan), "study/plan.txt")
    return Parent(run_id, run.info.experiment_id)


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def work(study, storage, cfg: StudyConfig, cells: list, parent: Parent) -> None:
    """Claim and run queued trials until none is left, looking for killed trials between trials.

    With nothing left to claim while trials still run elsewhere, wait (at most one grace period,
    or until they end) so that a trial whose worker died is detected, re-enqueued and run here.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    fail_killed_trials(study)
    deadline = None
    seen: dict[str, int] = {}  # each distinct error -> the first trial that failed with it here
    streak: list[int] = []  # the trials in a row (here) that failed with `streak_error`
    streak_error = None
    while True:
        trial_id = claim(storage, study_id)
        if trial_id is not None:
            total = len(storage.get_all_trials(study_id, deepcopy=False))
            error = run_trial(study, storage, trial_id, cfg, cells, parent, total, seen)
            number = storage.get_trial(trial_id).number
            if error is None:
                streak = []
            elif streak and error == streak_error:
                streak.append(number)
            else:
                streak, streak_error = [number], error
            if cfg.max_same_failures and len(streak) >= cfg.max_same_failures:
                stop(storage, study_id, cfg, parent, streak, seen[error])
            fail_killed_trials(study)
            deadline = None
            continue
        if not storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            return
        deadline = deadline or time.monotonic() + cfg.grace_period + cfg.heartbeat_interval
        if time.monotonic() > deadline:
            return
        time.sleep(cfg.heartbeat_interval)
        fail_killed_trials(study)


def stop(storage, study_id: int, cfg: StudyConfig, parent: Parent, streak: list[int], first: int) -> None:
    """K trials in a row failed the same way: the rest would too. Leave them queued, fail the parent, say so once."""
    left = len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)))
    message = (f"study '{cfg.name}' stopped: trials {', '.join(map(str, streak))} failed in a row with the same error "
               f"(printed above for trial {first}), so {left} trials were not run; they stay queued: fix the cause and "
               f"rerun the same command (max_same_failures={cfg.max_same_failures}; 0 never stops)")
    client = MlflowClient()
    client.set_tag(parent.run_id, "medvlm.error", message)
    client.set_terminated(parent.run_id, "FAILED")
    raise MedvlmError(message)


def fail_killed_trials(study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def claim(storage, study_id: int) -> int | None:
    """Atomically switch one WAITING trial to RUNNING for this worker; its id, or None when the queue is empty."""
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                storage.record_heartbeat(trial_id)
                return trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def transient_errors() -> tuple[type[BaseException], ...]:
    """Storage errors worth retrying: the database went away or timed out, not a bad request."""
    return StorageInternalError, OperationalError, InterfaceError


def set_summary_tag(client: MlflowClient, run_id: str, key: str, value: str) -> None:
    """Two workers that finish together both summarise; MLflow's SQL store inserts a new tag without a lock, so the
    loser of that race gets a unique-key error, and writing again updates the row the winner inserted."""
    try:
        client.set_tag(run_id, key, value)
    except mlflow.exceptions.MlflowException:
        client.set_tag(run_id, key, value)


def retrying(call: Callable[[], T], what: str, budget_s: float = TRANSIENT_BUDGET_S) -> T:
    """`call()`, retried with exponential backoff while the storage has transient errors, for at most `budget_s`."""
    deadline, delay = time.monotonic() + budget_s, 1.0
    while True:
        try:
            return call()
        except transient_errors() as exc:
            if time.monotonic() + delay > deadline:
                raise
            print(f"medvlm: {what}: storage error ({one_line(exc)[:120]}); retrying in {delay:.0f} s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


@contextmanager
def heartbeat(storage, trial_id: int, interval: float) -> Iterator[None]:
    """Record the trial's heartbeat every `interval` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the trial itself goes on
                print(f"medvlm: heartbeat of trial id {trial_id} not recorded ({type(exc).__name__}); retrying",
                      file=sys.stderr)

    thread = threading.Thread(target=beat, name=f"medvlm-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Fence:
    """Completes a trial only while this worker still owns it, before its MLflow child may end FINISHED.

    The trial id is the ownership token: a worker owns a trial from its atomic WAITING->RUNNING claim
    until the trial leaves RUNNING, and a trial declared lost (FAIL) is retried under a new id. The
    state change to COMPLETE is Optuna's row-locked compare-and-set on RUNNING, so exactly one of
    "this worker tells" and "another worker declares it lost" wins. A worker that paused past
    `grace_period` loses: it raises `Superseded`, so its child run ends KILLED, never FINISHED.
    """

    def __init__(self, storage, trial_id: int, headline: str):
        self.storage, self.trial_id, self.headline = storage, trial_id, headline
        self.value: float | None = None

    def __call__(self, run_id: str, metrics: dict[str, float]) -> None:
        value = metrics.get(self.headline, float("nan"))
        if not math.isfinite(value):
            return  # the trial fails after the run ends; there is nothing to complete
        number = self.storage.get_trial(self.trial_id).number
        try:
            retrying(lambda: self.storage.set_trial_user_attr(self.trial_id, RUN_ATTR, run_id), f"trial {number}")
            retrying(lambda: self.storage.set_trial_user_attr(self.trial_id, "metrics", metrics), f"trial {number}")
            retrying(lambda: self.storage.set_trial_state_values(self.trial_id, optuna.trial.TrialState.COMPLETE,
                                                                 [value]), f"trial {number}")
        except optuna.exceptions.UpdateFinishedTrialError:
            frozen = retrying(lambda: self.storage.get_trial(self.trial_id), f"trial {number}")
            if not (frozen.state == optuna.trial.TrialState.COMPLETE and frozen.user_attrs.get(RUN_ATTR) == run_id):
                raise Superseded(f"trial {number} was declared lost (no heartbeat for grace_period) and retried by "
                                 f"another worker; this copy's result is discarded") from None
        self.value = value


def run_trial(study, storage, trial_id: int, cfg: StudyConfig, cells: list, parent: Parent, total: int,
              seen: dict[str, int] | None = None) -> str | None:
    """One trial as a nested MLflow child run; completes it in Optuna (the `Fence`) or tells FAIL.

    Returns the trial's one-line error, or None when it completed (or was completed by another worker).
    """
    from medvlm.experiments import run_experiment  # lazy: a dry run or a finished study loads no torch

    frozen, trial = storage.get_trial(trial_id), optuna.Trial(study, trial_id)
    label = frozen.user_attrs.get("label", f"trial {trial.number}")
    config = trial_config(cells, frozen.params)
    tags = {"mlflow.parentRunId": parent.run_id, "medvlm.trial": str(trial.number),
            "medvlm.group": frozen.user_attrs.get("group", ""), "medvlm.study_kind": cfg.kind,
            "medvlm.perturbed": perturbed(frozen.params)}
    headline = PRIMARY_METRIC.get(config.task, "")
    fence = Fence(storage, trial_id, headline)
    log.info("trial %d/%d: %s", trial.number + 1, total, label)
    try:
        with heartbeat(storage, trial_id, cfg.heartbeat_interval):
            metrics = run_experiment(config, nested=True, extra_tags=tags, commit=fence)
    except Superseded as exc:
        print(f"medvlm: {exc}", file=sys.stderr)
        return None
    except MedvlmError as exc:
        return _fail(study, trial, one_line(exc), seen)
    except KeyboardInterrupt:
        _fail(study, trial, "interrupted")
        storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id))
        raise
    except BaseException as exc:
        _fail(study, trial, f"{type(exc).__name__}: {exc}")
        raise
    if fence.value is None:
        return _fail(study, trial, f"{headline} is {metrics.get(headline, float('nan'))} (missing or undefined); "
                                   f"the run is kept in MLflow", seen)
    return None


def _fail(study, trial, message: str, seen: dict[str, int] | None = None) -> str:
    """Record the trial as FAIL with its one-line error; print the error the first time this worker sees it."""
    seen = {} if seen is None else seen
    line = clipped(message, 1000) or "failed"
    first = seen.setdefault(line, trial.number)
    shown = line if first == trial.number else f"the same error as trial {first}"
    print(f"medvlm: trial {trial.number} failed: {shown}", file=sys.stderr)
    try:
        retrying(lambda: trial.set_user_attr("error", line), f"trial {trial.number}")
        retrying(lambda: study.tell(trial, state=TrialState.FAIL), f"trial {trial.number}")
    except Exception as exc:  # noqa: BLE001 - already finished elsewhere; the failure is printed above
        print(f"medvlm: could not record trial {trial.number} as failed ({type(exc).__name__})", file=sys.stderr)
    return line


def register_best(client: MlflowClient, parent: Parent, run_ids: Iterable[str]) -> None:
    """Register the adapter of the best completed trial (validation metric), once per registered model name.

    Trials log their adapters without registering them, so the registry holds only what a study chose.
    Reruns (`summarize_only`, the next worker) find the study's version by its tag and register nothing.
    """
    best: dict[str, tuple[float, str, str]] = {}
    for run_id in run_ids:
        model_id = client.get_run(run_id).data.tags.get(MODEL_TAG)
        if model_id is None:
            continue
        tags = client.get_logged_model(model_id).tags
        score = float(tags[VALUE_TAG]) * (1 if tags[HIGHER_TAG] == "True" else -1)
        if math.isfinite(score) and score >= best.get(tags[NAME_TAG], (-math.inf,))[0]:
            best[tags[NAME_TAG]] = (score, model_id, run_id)
    for name, (_, model_id, run_id) in best.items():
        if any(v.tags.get(STUDY_TAG) == parent.run_id for v in client.search_model_versions(f"name='{name}'")):
            continue
        version = register(client, model_id, run_id, study_parent=parent.run_id)
        log.info("registered the best trial's adapter: %s version %s", name, version)


def finish(study, cfg: StudyConfig, parent: Parent, figure_format: str) -> int:
    """Write the summary when nothing is queued or running (or when asked to), its figures in `figure_format`;
    1 if trials failed for good."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    pending = states[TrialState.WAITING] + states[TrialState.RUNNING]
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    counts = {"complete": states[TrialState.COMPLETE], "failed": len(failed), "pending": pending}
    print(f"study '{cfg.name}': {counts['complete']} complete, {counts['failed']} failed, {pending} queued or running")
    for t in failed:
        print(f"  trial {t.number} ({t.user_attrs.get('label', '')}) failed: {t.user_attrs.get('error', 'its worker stopped')}")
    if pending and not cfg.summarize_only:
        print("other workers are still running trials; the last one to finish writes the summary "
              "(or run this command again with summarize_only=true)")
        return 1 if failed else 0
    client = MlflowClient()
    winners = {t.user_attrs.get(RUN_ATTR) for t in trials if t.state == TrialState.COMPLETE}
    children = child_runs(client, parent.run_id, status=None)
    children = children[children["run_id"].isin(winners)]  # one child per completed trial: the one that won it
    table = summary_table(children)
    log_summary(client, parent.run_id, cfg.kind, children, table, counts, figure_format)
    set_summary_tag(client, parent.run_id, "medvlm.failed_trials", str(len(failed)))
    if cfg.register_best and not pending:
        register_best(client, parent, children["run_id"])
    if not pending:
        client.set_terminated(parent.run_id, "FINISHED")
    print(format_summary(cfg.kind, table))
    return 1 if failed else 0
