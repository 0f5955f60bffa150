"""`medvlm --help` and `medvlm models` start without torch, MLflow or transformers, and every flag
says what it does and which values it takes.

The heavy imports are what made `--help` take 5-18 s; this checks their absence directly. The time itself is
a benchmark's business (`python benchmarks/bench_scale.py --skip models,study`), not a test's: under load a
timing bound fails for reasons that are not start-up cost.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import medvlm
from medvlm.config import field_choices

HEAVY = ("torch", "mlflow", "transformers", "open_clip", "optuna", "pandas", "matplotlib")

PROBE = """
import json, sys
from medvlm.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["report", "--help"], ["params"]])
def test_light_commands_import_nothing_heavy(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}


def test_models_lists_the_zoo_and_run_commands_still_get_their_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "medvlm.cli", "models"], capture_output=True, text=True, check=True)
    assert "clip-vit-b32" in out.stdout and "biomedclip" in out.stdout
    from medvlm.cli import build_parser

    args = build_parser("stability").parse_args(["stability", "--model", "m", "--dataset", "d", "--trials", "3"])
    assert (args.model, args.trials) == ("m", "3")


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "medvlm.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"medvlm {medvlm.__version__}"


def test_every_flag_has_help_and_shows_its_choices() -> None:
    from medvlm.cli import COMMANDS, build_parser, entry_point_schemas

    for command in COMMANDS:
        sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            described = (action.help or "").split("(default:")[0].strip()
            assert described, f"medvlm {command} {action.option_strings[0]} has no help"
            field = next((s.model_fields[action.dest] for s in entry_point_schemas(command)
                          if action.dest in s.model_fields), None)
            choices = field_choices(field) if field is not None else ()
            if choices:
                assert action.metavar == "{" + ",".join(choices) + "}", action.dest
    finetune = subprocess.run([sys.executable, "-m", "medvlm.cli", "finetune", "--help"], capture_output=True, text=True,
                              check=True).stdout
    assert "{zeroshot,linear,frozen,partial,full,lora,mlp}" in finetune and "{classification,retrieval,vqa}" in finetune
    assert "biomedclip" in finetune and "{28,64,128,224}" in finetune  # zoo names under --model; sizes
