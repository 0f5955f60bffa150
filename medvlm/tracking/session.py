"""One MLflow run per experiment, with the conventions of the README's "What a run records" section.

- The embedded default store is `sqlite:///mlflow.db`; `MLFLOW_TRACKING_URI` overrides it.
- Inside `mlflow run`, `MLFLOW_RUN_ID` is set and the first top-level run resumes that run,
  so the project's run gets everything and no stray run appears.
- One experiment rule for `medvlm`, `mlflow run`, studies and reports (`resolve_experiment`).
- Any exception marks the run FAILED after flushing what was logged, with the one-line
  reason in the `medvlm.error` tag.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.tracking import fluent
from mlflow.types.schema import ColSpec, Schema
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

import medvlm
from medvlm.adapters.base import REGISTERED_TAG
from medvlm.catalog import TASKS
from medvlm.config import RunConfig
from medvlm.engine.checkpoints import CHECKPOINT_FILE, MACHINE_FIELDS
from medvlm.errors import MedvlmError, Superseded, TrackingError, one_line
from medvlm.progress import log
from medvlm import names
from medvlm.zoo.entries import zoo_entries

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
WARNING_TAG_PREFIX = "medvlm.warning."  # a caveat on the run's numbers; reports show it beside them
DEFAULT_EXPERIMENT = "Default"  # MLflow's own: where `mlflow run` puts a run when no experiment is named
SOURCE_PREFIXES = ("local-dir", "hf-hub", "hf", "file")
CHECKPOINT_TAG = "medvlm.checkpoint_dir"
RUN_NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description
CHECKPOINTED_TAG = "medvlm.checkpoint_epoch"  # the last epoch a resume checkpoint was written for (1-based)
HEALTH_TIMEOUT_S = 5
# MLflow's async logger otherwise polls its queue with a 1 s timeout, and every flush (end of a run,
# before an adapter is logged) waits that poll out: +1.0 s per run, measured on an H200 in every
# training row of bench_scale. Buffering makes the logger wait on its stop event instead, so a flush
# returns at once; metrics still reach the store within this many seconds. A user's value wins.
os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
# A tracking server that stays down makes each request give up after about 15 s (MLflow's defaults
# retry for minutes per request, and training logs many); the MLFLOW_HTTP_REQUEST_* variables override.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def process_rank() -> int:
    """The distributed rank (torchrun / accelerate launch set RANK); 0 when not distributed."""
    return int(os.environ.get("RANK", "0"))


def ensure_tracking() -> str:
    """Use the env's tracking URI or the embedded SQLite store; fail fast if a server is down.

    Under multi-process training only rank 0 tracks; the other ranks log into a throwaway
    store in a temporary folder, so experiment code needs no rank checks and no stray runs appear.
    """
    if process_rank() != 0:
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            os.environ.pop(var, None)
        uri = f"sqlite:///{tempfile.mkdtemp(prefix=f'medvlm-rank{process_rank()}-')}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        return uri
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    if not sys.stderr.isatty():  # MLflow's artifact bars (logging an adapter) would redraw lines in a log file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith(("http://", "https://")):
        for var, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(var, value)
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                                f"(mlflow server ...) or unset MLFLOW_TRACKING_URI to use {DEFAULT_TRACKING_URI}") from None
    return uri


def resolve_experiment(explicit: str = "") -> tuple[str, str | None]:
    """The experiment of a top-level run (a run, a study's parent, a report) and the project run to resume.

    Precedence: explicit `experiment` > MLFLOW_EXPERIMENT_NAME > the experiment `mlflow run` created its
    run in (its --experiment-name) > MLflow's `Default`. So `medvlm finetune` and `mlflow run . -e finetune`
    with nothing named land in one experiment, and `medvlm report` reads it without being told.
    `MLFLOW_RUN_ID` is consumed so that no later run resumes it by accident. MLflow cannot move a run, so
    when the precedence picks another experiment than the project run's, the results go to a new run
    there and the project run gets a `medvlm.results_in` tag saying where.
    """
    project = os.environ.pop("MLFLOW_RUN_ID", None) if process_rank() == 0 else None
    named = explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
    if project is None:
        return named or DEFAULT_EXPERIMENT, None
    client = mlflow.MlflowClient()
    project_experiment = client.get_experiment(client.get_run(project).info.experiment_id).name
    if not named or named == project_experiment:
        return project_experiment, project
    client.set_tag(project, "medvlm.results_in", f"experiment '{named}' (experiment= and MLFLOW_EXPERIMENT_NAME "
                                                 f"take precedence over mlflow run's experiment)")
    print(f"medvlm: results go to experiment '{named}', not to mlflow run's '{project_experiment}' "
          f"(experiment= and MLFLOW_EXPERIMENT_NAME take precedence)", file=sys.stderr)
    return named, None


@functools.cache
def provenance_tags() -> dict[str, str]:
    """`medvlm.version`, and the commit of the checkout medvlm runs from (with `medvlm.git_dirty` when it has
    uncommitted changes); no commit outside a git checkout or without git."""
    tags = {"medvlm.version": medvlm.__version__}
    root = str(Path(medvlm.__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return tags
    if commit.returncode == 0:
        tags["medvlm.git_commit"] = commit.stdout.strip()
        tags["medvlm.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    return tags


def run_tags(cfg: RunConfig, domain: str) -> dict[str, str]:
    tags = {"medvlm.model": cfg.model, "medvlm.domain": domain, "medvlm.dataset": cfg.dataset,
            "medvlm.task": cfg.task, "medvlm.strategy": cfg.strategy, "medvlm.seed": str(cfg.seed), **provenance_tags()}
    if cfg.study:
        tags["medvlm.study"] = cfg.study
    return tags


def short_name(source: str) -> str:
    """`local-dir:/data/models/tiny-clip` -> `tiny-clip`, `hf:org/roco` -> `roco`: what tells runs apart."""
    value = source.split(":", 1)[1] if source.split(":", 1)[0] in SOURCE_PREFIXES else source
    value = value.rstrip("/\\")
    return (value.replace("\\", "/").rsplit("/", 1)[-1] or value) if ("/" in value or "\\" in value) else value


def describe(cfg: RunConfig) -> str:
    """`model · dataset · strategy` with short names: the default run name and every run figure's title."""
    return f"{short_name(cfg.model)} · {short_name(cfg.dataset)} · {cfg.strategy}"


def run_name(cfg: RunConfig, tags: dict[str, str] | None = None) -> str:
    """`run_name`, else `MLFLOW_RUN_NAME`, else `model · dataset · strategy`; study trials add their number
    and perturbed values, so children of one parent read apart."""
    tags = tags or {}
    name = cfg.run_name or os.environ.get("MLFLOW_RUN_NAME") or describe(cfg)
    if "medvlm.trial" in tags:
        name += f" · trial {int(tags['medvlm.trial']) + 1}"
        if tags.get("medvlm.perturbed"):
            name += f" · {tags['medvlm.perturbed']}"
    return name


def flat_params(cfg: RunConfig) -> dict[str, str]:
    """The run's params: every parameter that applies to it (`RunConfig.applicable`), lists joined by commas."""
    return {k: (",".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in cfg.applicable().items()}


def _same_param(logged: str, given: str) -> bool:
    """MLflow stores at most MAX_PARAM_VAL_LENGTH characters of a param: compare what it could keep."""
    return logged == given[:MAX_PARAM_VAL_LENGTH]


def check_resumable(cfg: RunConfig) -> None:
    """Refuse a resume that would retrain finished results, mix parameters, or silently start over.

    Runs before the run is reopened, so a refused resume leaves the run exactly as it was. The
    checkpoint is looked up by run id: in `checkpoint_dir` and where the run recorded it was written.
    A run stopped before its first checkpoint (`checkpoint_every`) has none, and trains from the start.
    """
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(cfg.resume)
    except mlflow.exceptions.MlflowException:
        raise MedvlmError(f"resume: no MLflow run with id {cfg.resume} in {mlflow.get_tracking_uri()}; "
                          f"pass the run id of the interrupted run") from None
    if run.info.status == "FINISHED":
        raise MedvlmError(f"resume: run {cfg.resume} already FINISHED, its results are final; start a new run "
                          f"without --resume")
    logged = run.data.params
    diffs = [f"{k} ({logged[k][:80]} vs {v[:80]})" for k, v in flat_params(cfg).items()
             if k in logged and k not in MACHINE_FIELDS and not _same_param(logged[k], v)]
    if diffs:
        raise MedvlmError(f"resume: run {cfg.resume} was started with other parameters: {', '.join(diffs[:3])}; "
                          f"pass the same parameters as the interrupted run")
    roots = list(dict.fromkeys(r for r in (os.path.abspath(cfg.checkpoint_dir), run.data.tags.get(CHECKPOINT_TAG)) if r))
    found = next((r for r in roots if os.path.isfile(os.path.join(r, cfg.resume, CHECKPOINT_FILE))), None)
    if found is not None:
        cfg.checkpoint_dir = found
    elif run.data.tags.get(CHECKPOINTED_TAG):
        raise MedvlmError(f"resume: no checkpoint of run {cfg.resume} in {' or '.join(roots)}; resume where it was "
                          f"trained, or pass checkpoint_dir=FOLDER holding {cfg.resume}/{CHECKPOINT_FILE}")


def log_config(run_id: str, cfg: RunConfig) -> None:
    """The parameters that apply to the run as params, and every resolved value in `config.json`.

    Under `mlflow run` the -P values are already logged ("" = not given) and MLflow params are
    immutable, so only the keys it did not log are added; `config.json` always holds every resolved value.
    """
    logged = mlflow.get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in flat_params(cfg).items() if k not in logged})
    mlflow.log_dict(cfg.resolved(), "config.json")


@contextmanager
def tracked_run(cfg: RunConfig, nested: bool = False, extra_tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume) the run for `cfg`; always end it with the right status.

    Everything after the run exists sits inside the guard, set-up included: any failure ends the run
    FAILED with `medvlm.error`, Ctrl-C ends it KILLED, and the exception carries the run id
    (`medvlm_run_id`) so the CLI can print the exact `--resume` command.
    """
    ensure_tracking()
    experiment, project_run = (None, None) if nested else resolve_experiment(cfg.experiment)
    if experiment is not None and project_run is None:
        # not MLFLOW_EXPERIMENT_ID: mlflow.set_experiment itself exports it, so it would pin every later run
        mlflow.set_experiment(experiment)
    resuming = bool(cfg.resume) and process_rank() == 0
    if resuming:
        check_resumable(cfg)
        run = mlflow.start_run(run_id=cfg.resume, log_system_metrics=cfg.system_metrics or None)
    else:
        run = mlflow.start_run(run_id=project_run, run_name=None if project_run else run_name(cfg, extra_tags),
                               nested=nested, log_system_metrics=cfg.system_metrics or None)
    try:
        if not resuming:
            log_config(run.info.run_id, cfg)
        if project_run:
            mlflow.set_tag("mlflow.runName", run_name(cfg, extra_tags))
        entry = zoo_entries().get(cfg.model)
        domain = entry.domain if entry is not None else "unknown"
        mlflow.set_tags({**run_tags(cfg, domain), CHECKPOINT_TAG: os.path.abspath(cfg.checkpoint_dir),
                         **(extra_tags or {})})
        yield run

        mlflow.flush_async_logging()
        finished = mlflow.get_run(run.info.run_id) if process_rank() == 0 else None
        if finished is not None:
            mlflow.set_tag(RUN_NOTE_TAG, run_description(cfg, finished))
        mlflow.end_run(status="FINISHED")
    except BaseException as exc:
        _end_unsuccessful(run.info.run_id, exc)
        raise
    if finished is not None:
        log.info(run_summary(finished))


def _end_unsuccessful(run_id: str, exc: BaseException) -> None:
    """End the run FAILED (KILLED for Ctrl-C) with the reason; if the store is gone, say so in one line.

    Nothing is deleted here: the checkpoint stays, so `--resume` continues where the run stopped.
    """
    exc.medvlm_run_id = run_id
    status = "KILLED" if isinstance(exc, (KeyboardInterrupt, Superseded)) else "FAILED"
    try:
        if not store_reachable():
            raise TrackingError("unreachable")
        mlflow.flush_async_logging()
        mlflow.set_tag("medvlm.error", one_line(exc)[:500])
        mlflow.end_run(status=status)
    except Exception as store_exc:  # noqa: BLE001 - any store failure here means the outcome cannot be recorded
        _forget_active_run()
        if isinstance(exc, KeyboardInterrupt):
            return
        # metrics still queued for the dead store fail again at exit; the one line below already says so
        logging.getLogger("mlflow.utils.async_logging.async_logging_queue").setLevel(logging.CRITICAL)
        reason = one_line(exc) if store_exc.args == ("unreachable",) else one_line(store_exc)
        lost = TrackingError(f"the tracking store {mlflow.get_tracking_uri()} stopped answering ({reason}); run "
                             f"{run_id} is left RUNNING and its training progress is kept in its checkpoint")
        lost.medvlm_run_id = run_id
        raise lost from None


def _forget_active_run() -> None:
    """Pop the run from this process's active-run stack without talking to the (unreachable) store."""
    if fluent._active_run_stack.get():
        fluent._active_run_stack.get().pop()
    os.environ.pop("MLFLOW_RUN_ID", None)


def store_reachable() -> bool:
    """False when an HTTP tracking server does not answer its health check (file and SQL stores are local)."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S).read()
        return True
    except (urllib.error.URLError, OSError):
        return False


def ui_url(experiment_id: str, run_id: str) -> str:
    """Where the run opens in the MLflow UI: the tracking server itself, or `mlflow ui` on the local store."""
    uri = mlflow.get_tracking_uri()
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path} (after `mlflow ui --backend-store-uri {uri}`)"


def registered_version(run: mlflow.entities.Run) -> tuple[str, str] | None:
    """(registered model, version) of the adapter the run registered, or None."""
    registered = run.data.tags.get(REGISTERED_TAG)
    return tuple(registered.rsplit("/", 1)) if registered else None


def run_description(cfg: RunConfig, run: mlflow.entities.Run) -> str:
    """The run's description on its MLflow page: what ran, its headline test results, how training went and
    what it registered, from what the run logged."""
    metrics = run.data.metrics
    task = TASKS[cfg.task]
    keys = dict.fromkeys(k for row in (task, task.generative) if row is not None
                         for k in (row.primary_metric, *row.headline_metrics))
    lines = [f"{cfg.strategy} · {cfg.model} · {cfg.dataset} ({task.title})."]
    if any(key in metrics for key in keys):
        lines.append("Test: " + ", ".join(f"{key} {metrics[key]:.4f}" for key in keys if key in metrics) + ".")
    if names.TRAIN_EPOCHS_RUN in metrics:
        lines.append(f"Trained {int(metrics[names.TRAIN_EPOCHS_RUN])} epochs, "
                     f"kept epoch {int(metrics[names.TRAIN_BEST_EPOCH])}; "
                     f"{int(metrics.get(names.TRAINABLE_PARAMS, 0)):,} trainable parameters.")
    if registered := registered_version(run):
        lines.append(f"Registered as {registered[0]} version {registered[1]}.")
    return "  \n".join(lines)


def run_summary(run: mlflow.entities.Run) -> str:
    """The closing line: which run, where to see it, and which registered version it made."""
    run_id = run.info.run_id
    line = f"run {run_id} ({run.info.run_name}) finished · {ui_url(run.info.experiment_id, run_id)}"
    if registered := registered_version(run):
        name, version = registered
        best = mlflow.MlflowClient().get_model_version_by_alias(name, "best").version
        line += f" · registered {name} version {version} (@best is version {best})"
    return line


def log_epoch(number: int, row: dict[str, float]) -> None:
    """Per-epoch metrics at step = the epoch's number, logged asynchronously so training never waits on the store."""
    mlflow.log_metrics(row, step=number, synchronous=False)


def note_checkpoint(number: int) -> None:
    """Record that a resume checkpoint exists: a later resume that cannot find it refuses instead of starting over.

    Synchronous (one store call per checkpoint): a store that has gone away fails here, in the training
    loop, with the usual one line and `--resume` command, not later in a background thread. `number` is the
    epoch's number (`names.epoch_number`)."""
    mlflow.set_tag(CHECKPOINTED_TAG, str(number))


def replay_epochs(history: list[dict[str, float]]) -> None:
    """After a resume, log the checkpointed epochs whose metrics never reached the store (same steps as `log_epoch`)."""
    run_id = mlflow.active_run().info.run_id
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, names.TRAIN_LOSS)}
    for number, row in enumerate(history, start=names.FIRST_EPOCH):
        if number not in logged:
            mlflow.log_metrics(row, step=number)


def log_dataset(name: str, source: str, digest: str, context: str, extra: dict[str, Any] | None = None,
                schema: dict[str, str] | None = None, profile: dict[str, Any] | None = None) -> None:
    """Dataset lineage: `mlflow.log_input` with the data's digest, its columns (`{name: MLflow type}`) and a profile
    (row and class counts) that the run's inputs show; `extra` also goes on the input as tags."""
    class ProfiledDataset(MetaDataset):
        """A MetaDataset (no data loaded) that also carries a profile, as MLflow's pandas and numpy datasets do."""

        @property
        def profile(self) -> dict[str, Any] | None:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), **({"profile": json.dumps(profile)} if profile else {})}

    columns = Schema([ColSpec(kind, column) for column, kind in schema.items()]) if schema else None
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns on every run that the path is ambiguous
        # between the two (identical) candidates; a real ambiguity between different sources still warns
        warnings.filterwarnings("ignore", r"The specified dataset source can be interpreted in multiple ways: (\w+), \1\.")
        resolved = resolve_dataset_source(source)
    dataset = ProfiledDataset(resolved, name=name, digest=digest, schema=columns)
    tags = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()} or None
    try:
        mlflow.log_input(dataset, context=context, tags=tags)
    except mlflow.exceptions.MlflowException as exc:
        # The store looks a dataset up and then inserts it, unlocked: two study workers logging the same
        # data at once collide on its unique key. The row now exists, so the second try links to it.
        if not any(word in str(exc).lower() for word in ("unique", "duplicate")):
            raise
        mlflow.log_input(dataset, context=context, tags=tags)
