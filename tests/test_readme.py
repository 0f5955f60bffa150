"""Every shell command in README.md still works as written.

Marker convention: each fenced shell block (```bash, ```sh, ```shell, ```console) in README.md has an
HTML comment on the line before its fence:

    <!-- readme-test: run -->               run the block for real, offline: bash in a scratch folder with
                                            the tiny model's recipe, ../shared/data and SUBSTITUTIONS below
    <!-- readme-test: parse-only: WHY -->   it needs weights, a network or a server (say which): every
                                            `medvlm ...`, `mlflow run ...` and `python -c ...` in it is only
                                            checked: subcommand, entry point, every flag and -P key exist

Parsing is what `medvlm COMMAND --help` would accept: the real argparse parser, the generated MLproject
and `mlflow run`'s own options. A README command that no longer parses fails here; so does a shell
block without a marker. Keep `run` blocks cheap (tiny model, size 28, one epoch).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from medvlm.cli import build_parser, unknown_flags_error
from medvlm.errors import MedvlmError
from tests.conftest import REPO, SHARED_DATA

README = REPO / "README.md"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"<!--\s*readme-test:\s*(run|parse-only)\b(.*?)-->")
HOW_TO_MARK = ("put `<!-- readme-test: run -->` (runs offline with the tiny model and ../shared/data) or "
               "`<!-- readme-test: parse-only: WHY -->` (needs weights/network/a server) on the line before its fence; "
               "see the top of tests/test_readme.py")
# (pattern, replacement) applied to `run` blocks only: cheap and offline, same commands otherwise.
SUBSTITUTIONS = [(r"--epochs \d+", "--epochs 1"), (r"--size \d+", "--size 28"),
                 (r"\.\./shared/data", str(SHARED_DATA))]


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    marker: str  # "run", "parse-only" or "" (none)
    text: str

    @property
    def where(self) -> str:
        return f"README.md line {self.line}"

    def commands(self) -> list[list[str]]:
        """Each command as shell words: continuations joined, `&&`/`;` split, comments and console output dropped."""
        lines = self.text.splitlines()
        if self.language == "console":
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        commands = []
        for line in joined.splitlines():
            words = [w for w in shlex.split(line, comments=True) if w != "…"]  # … marks an elided part
            current: list[str] = []
            for word in [*words, ";"]:
                if word in ("&&", ";", "||"):
                    commands += [current] if current else []
                    current = []
                else:
                    current.append(word)
        return commands


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        language = fence.group(1)
        body = "\n".join(lines[i + 1:end])
        if language in SHELL_LANGUAGES or (not language and any(x.startswith("$ ") for x in lines[i + 1:end])):
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.search(before)
            blocks.append(Block(i + 1, language or "console", marker.group(1) if marker else "", body))
        i = end + 1
    return blocks


BLOCKS = readme_blocks()


def entry_point_params() -> dict[str, set[str]]:
    project = yaml.safe_load((REPO / "MLproject").read_text())
    return {name: set(entry["parameters"]) for name, entry in project["entry_points"].items()}


def mlflow_run_options() -> dict[str, bool]:
    """`mlflow run`'s own options -> whether each takes a value (its click definition)."""
    from mlflow.cli import run

    return {opt: not param.is_flag for param in run.params for opt in getattr(param, "opts", []) if opt.startswith("-")}


def check_medvlm(args: list[str]) -> None:
    """What `medvlm ARGS` would accept before doing anything: the real parser, unknown flags rejected."""
    parsed, extras = build_parser().parse_known_args(args)
    if extras:
        raise unknown_flags_error(extras, [k for k in vars(parsed) if k not in ("func", "command")])


def check_mlflow_run(args: list[str]) -> None:
    """`mlflow run URI -e NAME -P k=v ...`: mlflow's options, the MLproject entry point and its -P keys,
    then the same values as `medvlm NAME --k v` flags."""
    options, params = mlflow_run_options(), entry_point_params()
    entry, flags, i = "main", [], 1  # args[0] is the project URI
    while i < len(args):
        word = args[i]
        if word in ("-P", "--param-list"):
            key, sep, value = args[i + 1].partition("=")
            assert sep, f"-P {args[i + 1]} is not KEY=VALUE"
            flags += [f"--{key}", value]
            i += 2
        elif word in ("-e", "--entry-point"):
            entry, i = args[i + 1], i + 2
        elif word in options:
            i += 2 if options[word] else 1
        else:
            raise AssertionError(f"`mlflow run` has no option {word}")
    assert entry in params, f"no MLproject entry point '{entry}' (entry points: {', '.join(params)})"
    unknown = sorted({f[2:] for f in flags[::2]} - params[entry])
    assert not unknown, f"MLproject entry point '{entry}' has no parameter {unknown[0]} (python scripts/gen_mlproject.py > MLproject?)"
    check_medvlm([entry, *flags])


def check_command(words: list[str]) -> None:
    if words[0] == "medvlm":
        check_medvlm(words[1:])
    elif words[:2] == ["mlflow", "run"]:
        check_mlflow_run(words[2:])
    elif words[:2] == ["python", "-c"]:
        compile(words[2], "<readme>", "exec")


def test_the_readme_has_shell_blocks_and_each_is_marked():
    assert len(BLOCKS) >= 8 and any(b.marker == "run" for b in BLOCKS)
    unmarked = [b.where for b in BLOCKS if not b.marker]
    assert not unmarked, f"shell blocks without a marker at {', '.join(unmarked)}: {HOW_TO_MARK}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}" for b in BLOCKS])
def test_every_command_parses(block):
    for words in block.commands():
        try:
            check_command(words)
        except (MedvlmError, AssertionError, SyntaxError) as exc:
            pytest.fail(f"{block.where}: `{shlex.join(words)}` does not parse: {exc}. Fix the README command "
                        f"(or the CLI, if the README is right)", pytrace=False)


RUN_BLOCKS = [b for b in BLOCKS if b.marker == "run"]


@pytest.mark.skipif(not (SHARED_DATA / "medmnist" / "breastmnist.npz").is_file(),
                    reason=f"real BreastMNIST not found under {SHARED_DATA} (../shared/data beside the checkout)")
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[f"line{b.line}" for b in RUN_BLOCKS])
def test_runnable_blocks_run_offline(block, workdir):
    script = block.text
    for pattern, replacement in SUBSTITUTIONS:
        script = re.sub(pattern, replacement, script)
    (workdir / "sweeps").symlink_to(REPO / "sweeps")
    bin_dir = str(Path(sys.executable).parent)  # the `medvlm` console script of this environment
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (f"{block.where} (a `run` block) failed with exit {proc.returncode} after the "
                                  f"substitutions {SUBSTITUTIONS}:\n{script}\n{proc.stderr[-3000:]}")
