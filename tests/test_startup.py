"""`medvlm --help` and `medvlm models` start without torch, MLflow or transformers (issue #16), `--help` prints
in under 2 s, and every flag says what it does and which values it takes (issue #14).

The heavy imports are what made `--help` take 5-18 s; this checks their absence directly and measures the time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

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


def test_help_prints_in_under_two_seconds() -> None:
    """Issue #14's bound, on the best of three starts: a busy CI box delays single processes at random,
    which is not start-up cost (~1 s with a load average of 12 on 2 cores; 15-19 s when it imported torch)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "medvlm.cli", "--help"], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
    assert "finetune" in out.stdout
    assert min(times) < 2.0, times


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
