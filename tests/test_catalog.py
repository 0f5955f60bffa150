"""Tasks and strategies as typed parts: one catalog row each, checked before any run exists.

- a task x strategy mistake is a one-line exit 2 from the config, and no MLflow run appears;
- which parameters an entry point takes is field metadata, so `medvlm zeroshot --help` and
  MLproject's zeroshot entry point list the same parameters;
- the experiments ask strategies what they can do; none compares a strategy name.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re

import pytest
import yaml
from mlflow.tracking import MlflowClient

from medvlm.catalog import STRATEGY_KINDS, TASKS
from medvlm.cli import build_parser, main
from medvlm.config import RunConfig, entry_point_fields
from medvlm.strategies import get_strategy
from tests.conftest import REPO


def help_flags(command: str) -> set[str]:
    """The parameters `medvlm COMMAND --help` prints flags for (`--a-b` and `--a_b` are one, `--no-x` is x's)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    names = {flag.replace("-", "_") for flag in re.findall(r"--(\w[\w-]*)", out.getvalue())} - {"help"}
    return {n for n in names if not (n.startswith("no_") and n[3:] in names)}


@pytest.mark.parametrize("task, strategy", [("retrieval", "linear"), ("vqa", "linear"), ("classification", "frozen")])
def test_a_task_strategy_mistake_exits_2_in_one_line_and_creates_no_run(workdir, capsys, task, strategy):
    code = main(["finetune", "--model", "clip-vit-b32", "--dataset", "anything", "--task", task, "--strategy", strategy])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"task={task}" in err and f"not '{strategy}'" in err
    assert all(s in err for s in TASKS[task].strategies)
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_vqa_linear_points_at_frozen(capsys):
    assert main(["finetune", "--model", "m", "--dataset", "d", "--task", "vqa", "--strategy", "linear"]) == 2
    assert "strategy=frozen" in capsys.readouterr().err


def test_zeroshot_help_and_mlproject_list_the_same_parameters():
    project = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for command in ("zeroshot", "finetune"):
        assert help_flags(command) == set(project[command]["parameters"]), command
    assert "lr" not in help_flags("zeroshot") and "lr" in help_flags("finetune")


def test_zeroshot_refuses_a_training_parameter(capsys):
    assert main(["zeroshot", "--model", "m", "--dataset", "d", "--lr", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr" in err


def test_training_only_fields_are_marked_on_the_schema():
    zeroshot, finetune = set(entry_point_fields("zeroshot")), set(entry_point_fields("finetune"))
    assert finetune == set(RunConfig.model_fields)
    assert {"strategy", "epochs", "lr", "lora_r", "resume", "train_fraction"} <= finetune - zeroshot
    assert {"model", "dataset", "task", "seed", "precision", "eval_batch_size"} <= zeroshot


def test_every_task_row_names_known_strategies_and_a_runner():
    for task in TASKS.values():
        assert set(task.strategies) <= set(STRATEGY_KINDS) and "zeroshot" in task.strategies
        module, _, function = task.runner.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert task.selection_metric.startswith("val_") and task.primary_metric.startswith("test_")


def test_strategy_objects_answer_from_the_catalog():
    assert [s for s in STRATEGY_KINDS if get_strategy(s).kind.produces_adapter] == ["lora", "mlp"]
    assert [s for s in STRATEGY_KINDS if get_strategy(s).kind.trains_every_weight] == ["full"]
    assert not get_strategy("zeroshot").kind.trains and get_strategy("linear").kind.trains
    assert not get_strategy("frozen").kind.trains_encoder and get_strategy("partial").kind.trains_encoder


def test_experiments_never_compare_a_strategy_name():
    compares = []
    for path in (REPO / "medvlm" / "experiments").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n for n in (node.left, *node.comparators) if isinstance(n, ast.Attribute)]
                if any(n.attr == "strategy" for n in names):
                    compares.append(f"{path.name}:{node.lineno}")
    assert compares == []
