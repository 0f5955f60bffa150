"""`medvlm --help` and `medvlm models` start without torch, MLflow or transformers (issue #16).

The heavy imports are what made `--help` take 5-18 s; this checks their absence directly (the
exact time belongs to benchmarks/bench_scale.py) plus one generous wall-clock bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

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


@pytest.mark.parametrize("argv", [["--help"], ["models"]])
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


def test_help_starts_within_a_generous_bound() -> None:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medvlm.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - t0 < 10.0  # ~0.2 s on a quiet 2-core box; 5-18 s when it imported torch
