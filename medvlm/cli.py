"""The `medvlm` console script; MLproject entry points call the same functions.

Flags are generated from `RunConfig`, so `--lr`, `-P lr=` and a YAML `lr:` are one parameter.
User-fixable errors print one line and exit 2; the MLflow run (if one started) is FAILED.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import shlex
import sys
from collections.abc import Callable

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from medvlm import __version__
from medvlm.catalog import STRATEGY_KINDS, TASKS
from medvlm.config import RunConfig, build_config, entry_point_fields, field_choices
from medvlm.errors import ConfigError, MedvlmError, TrackingError, one_line
from medvlm.progress import setup_logging
from medvlm.report.config import ReportConfig, report_config
from medvlm.studies.spec import STUDY_FLAGS, StudyConfig
from medvlm.zoo.entries import zoo_entries

EXIT_USER_ERROR = 2
# the disk or the folder layout, not medvlm, refused a write
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage + error."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see `medvlm --help`, or `medvlm params` for every parameter")


def unknown_flags_error(extras: list[str], known: list[str]) -> ConfigError:
    """One line for unrecognised flags, with the closest flag of the same subcommand."""
    flag = extras[0].lstrip("-").replace("-", "_")
    close = difflib.get_close_matches(flag, known, n=1)
    hint = f"did you mean --{close[0]}?" if close else "see `medvlm COMMAND --help`"
    return ConfigError(f"unrecognized arguments: {' '.join(extras)}; {hint}")


class Switch(argparse.Action):
    """A boolean parameter: `--x` / `--no-x`, and `--x true|false` (what MLproject passes; "" = not given)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs):
        negated = [f"--no-{flag[2:]}" for flag in option_strings]
        super().__init__([*option_strings, *negated], dest, nargs="?", metavar="true|false", **kwargs)

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if option_string.startswith("--no-"):
            if value is not None:
                raise ConfigError(f"{option_string} takes no value (got '{value}'); "
                                  f"use {option_string} alone, or --{option_string[5:]} {value}")
            value = "false"
        setattr(namespace, self.dest, "true" if value is None else value)


def field_help(name: str, field: FieldInfo) -> str:
    """A flag's help: the schema's description, the zoo's names for `model`, and the default."""
    text = field.description or ""
    if name == "model":
        text += f"; zoo: {', '.join(zoo_entries())}"
    if not field.is_required():
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown if shown not in ('', None) else 'none'})"
    return text.replace("%", "%%")


def add_field_flag(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    """`--name` (and `--na-me`) for one schema field; a bool field becomes a `Switch`. A field with choices
    shows them (`{a,b}`); the schema, not argparse, checks the value, so every entry point words errors alike."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    if field.annotation is bool:
        parser.add_argument(*flags, dest=name, default=None, action=Switch, help=field_help(name, field))
    else:
        choices = field_choices(field)
        parser.add_argument(*flags, dest=name, default=None, metavar="{%s}" % ",".join(choices) if choices else "VALUE",
                            help=field_help(name, field))


def add_config_flags(parser: argparse.ArgumentParser, entry_point: str) -> None:
    """The entry point's RunConfig fields as flags (the same list MLproject's entry point gets)."""
    parser.add_argument("--config", help="YAML file with parameters (flags override it)")
    for name in entry_point_fields(entry_point):
        add_field_flag(parser, name, RunConfig.model_fields[name])


def overrides_from(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in RunConfig.model_fields or k == "config"}


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """`--spec` and the study flags, generated from `StudyConfig` like the run flags are from RunConfig."""
    parser.add_argument("--spec", help="YAML study spec, e.g. sweeps/midl2026.yaml (flags override its keys)")
    for name in STUDY_FLAGS:
        add_field_flag(parser, name, StudyConfig.model_fields[name])


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from medvlm.experiments import run_experiment  # lazy: torch and MLflow load only when a run starts

    cfg = build_config({**overrides_from(args), "strategy": "zeroshot"})
    print_metrics(run_experiment(cfg))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from medvlm.experiments import run_experiment  # lazy: torch and MLflow load only when a run starts

    cfg = build_config(overrides_from(args))
    if not STRATEGY_KINDS[cfg.strategy].trains:
        trained = [s for s in TASKS[cfg.task].strategies if STRATEGY_KINDS[s].trains]
        raise ConfigError(f"finetune needs strategy={'|'.join(trained)} (got '{cfg.strategy}'); "
                          f"use `medvlm zeroshot` for zero-shot")
    print_metrics(run_experiment(cfg))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """`ablation`, `stability` and `sweep`: run flags set every trial's defaults, study flags the study."""
    from medvlm.studies.runner import run_study  # lazy: torch, MLflow and Optuna load only when a study runs

    return run_study(args.command, overrides_from(args), {k: getattr(args, k) for k in STUDY_FLAGS}, args.spec)


def cmd_report(args: argparse.Namespace) -> int:
    from medvlm.report.run import run_report  # lazy: building a report loads pandas, MLflow and torch

    run_report(report_config(vars(args)))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    rows = [("name", "domain", "modality", "source", "image", "context", "licence", "gated")]
    rows += [(name, e.domain, e.modality, e.model + (f"@{e.pretrained}" if e.pretrained else ""), str(e.image_size),
              str(e.context_length), e.licence, "yes" if e.gated else "no") for name, e in zoo_entries().items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def entry_point_schemas(command: str) -> list[type[BaseModel]]:
    """The schemas a subcommand's flags come from, first match wins (report's `seed` is ReportConfig's)."""
    return {"report": [ReportConfig], **{c: [StudyConfig, RunConfig] for c in STUDY_COMMANDS}}.get(command, [RunConfig])


def cmd_params(args: argparse.Namespace) -> int:
    """Every parameter of every entry point, read off the subcommands' own parsers so the list cannot drift."""
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subcommands.choices.items():
        actions = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        if not actions:
            continue
        print(f"{command}: medvlm {command} --KEY VALUE | mlflow run . -e {command} -P KEY=VALUE")
        for action in actions:
            field = next((s.model_fields[action.dest] for s in entry_point_schemas(command) if action.dest in s.model_fields), None)
            if field is None:
                default = "(none)"
            else:
                default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            kind = f"switch: --{action.dest} / --no-{action.dest}; " if isinstance(action, Switch) else ""
            print(f"  {action.dest:18} {default:24} {kind}{action.help or ''}")
        print()
    return 0


def print_metrics(metrics: dict[str, float]) -> None:
    from medvlm.tracking.session import process_rank  # lazy: tracking loads MLflow

    if process_rank() != 0:
        return
    width = max(map(len, metrics), default=0)
    for key, value in sorted(metrics.items()):
        # counts (examples, errors, parameters) as whole numbers; scores and rates to four places
        print(f"{key:{width}} {int(value) if value > 1 and float(value).is_integer() else f'{value:.4f}'}")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, bool]] = {
    "zeroshot": (cmd_zeroshot, "evaluate a model with no training", True),
    "finetune": (cmd_finetune, "one training run (strategy: linear, partial, full, lora)", True),
    "models": (cmd_models, "print the model zoo", False),
    "params": (cmd_params, "print every parameter of every entry point with its default", False),
    "ablation": (cmd_study, "one configuration over training-data fractions (stratified subsample, fixed seed)", True),
    "stability": (cmd_study, "N trials per strategy with perturbed hyperparameters: mean, std, min, max", True),
    "sweep": (cmd_study, "every experiment a YAML spec in sweeps/ declares; resumable, many workers", True),
    "report": (cmd_report, "paper-style tables, medical − general gaps, bootstrap intervals and a recommendation from tracked runs", False),
}
STUDY_COMMANDS = ("ablation", "stability", "sweep")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand gets its flags (none with `only=""`).

    Flags of the study and report commands come from modules that import pandas, MLflow and torch;
    building them only for the command actually run keeps `medvlm --help` and `medvlm models` light.
    """
    parser = OneLineParser(prog="medvlm", allow_abbrev=False, description="General or medical CLIP? Evaluate and adapt, tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"medvlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (func, help_text, takes_config) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.set_defaults(func=func)
        if only is not None and name != only:
            continue
        if takes_config:
            add_config_flags(p, name)
        if name in STUDY_COMMANDS:
            add_study_flags(p)
        if name == "report":
            for field_name, field in ReportConfig.model_fields.items():
                add_field_flag(p, field_name, field)
    return parser


def resume_hint(argv: list[str], exc: BaseException) -> str:
    """How to continue after an interruption: the exact `--resume` command for a run, or rerun a study."""
    run_id = getattr(exc, "medvlm_run_id", None)
    command = argv[0] if argv else ""
    if command in STUDY_COMMANDS:
        return "; run the same command again to continue the study (completed trials are kept)"
    if command != "finetune" or not run_id:
        return ""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return f"; resume with: medvlm {shlex.join(kept)} --resume {run_id}"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        args, extras = build_parser(command if command in COMMANDS else "").parse_known_args(argv)
        if extras:
            raise unknown_flags_error(extras, [k for k in vars(args) if k not in ("func", "command")])
        return args.func(args)
    except KeyboardInterrupt as exc:
        run_id = getattr(exc, "medvlm_run_id", None)
        state = f"; run {run_id} is KILLED, its checkpoint kept" if run_id else ""
        print(f"medvlm: interrupted{state}{resume_hint(argv, exc)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MedvlmError as exc:
        hint = resume_hint(argv, exc) if isinstance(exc, TrackingError) else ""
        print(f"medvlm: error: {one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        print(f"medvlm: error: cannot write {exc.filename or 'a file'} ({exc.strerror}); free disk space or point "
              f"data_root, checkpoint_dir, MEDVLM_CACHE or the MLflow store at a writable folder", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
