"""The MIDL paper's protocol: sweeps/midl2026.yaml against the README conformance table, and the grids of
Figure 2 (stability.yaml) and Table 6 (ablation-organ.yaml), all from their dry runs."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from medvlm.cli import main
from medvlm.zoo import zoo_entries

REPO = Path(__file__).resolve().parents[1]
PAPER_MODELS = ["clip-vit-b32", "biomedclip", "pmc-clip", "cxr-clip"]
pytestmark = pytest.mark.skipif(any(m not in zoo_entries() for m in PAPER_MODELS), reason="a paper model is not in the zoo")


def conformance_table() -> list[dict[str, str]]:
    """The README rows between the conformance markers."""
    text = (REPO / "README.md").read_text()
    body = text.split("<!-- conformance:start -->")[1].split("<!-- conformance:end -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.strip().splitlines()[2:]]
    return [dict(zip(("element", "words", "runs", "key", "value"), row)) for row in rows]


def dry_run(capsys, command: str, spec: str) -> list[dict]:
    """Every listed run: task, model, dataset, strategy, the label's extra parts and the protocol key=values.

    Without the weights and data here the dry run still lists the plan, then exits 2 naming what is missing."""
    code = main([command, "--spec", str(REPO / "sweeps" / spec), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0 or (code == 2 and "no trial was started" in err), err
    lines = out.strip().splitlines()
    runs = []
    for line in lines[1:-1]:
        _, task, rest = line.split(maxsplit=2)
        label, protocol = rest.split("  |  ")
        model, dataset, strategy, *extra = label.split("  ")[0].split(" · ")
        runs.append({"task": task, "model": model, "dataset": dataset, "strategy": strategy, "extra": extra,
                     "perturbed": label.split("  ")[1:], **dict(kv.split("=", 1) for kv in protocol.split())})
    assert lines[-1] == f"{len(runs)} experiments" and lines[0].endswith(f": {len(runs)} experiments")
    return runs


def in_scope(run: dict, scope: str) -> bool:
    """`all`, `task[, task]` or `task: model, model`."""
    if scope == "all":
        return True
    tasks, _, models = scope.partition(":")
    return run["task"] in [t.strip() for t in tasks.split(",")] and (
        not models or run["model"] in [m.strip() for m in models.split(",")])


def test_midl2026_dry_run_equals_the_conformance_table(workdir, capsys, offline):
    table = conformance_table()
    assert len(table) >= 20 and {r["key"] for r in table} >= {
        "optimizer", "lr", "wd", "epochs", "patience", "head", "precision", "image"}
    runs = dry_run(capsys, "sweep", "midl2026.yaml")
    assert len(runs) == 144
    for row in table:
        scoped = [r for r in runs if in_scope(r, row["runs"])]
        assert scoped, f"conformance row {row['element']!r} governs no run"
        if row["key"] in ("model", "strategy"):
            assert sorted({r[row["key"]] for r in scoped}) == sorted(v.strip() for v in row["value"].split(",")), row
            continue
        for run in scoped:
            if run["strategy"] != "zeroshot" or row["key"] in run:  # zero-shot runs list no training keys
                assert run.get(row["key"]) == row["value"], (row["element"], run)
    # every training run is governed by one lr, wd and batch row
    for key in ("lr", "wd", "batch"):
        for run in (r for r in runs if r["strategy"] != "zeroshot"):
            assert sum(in_scope(run, row["runs"]) for row in table if row["key"] == key) == 1, (key, run)


def test_stability_dry_run_is_figure_2(workdir, capsys, offline):
    runs = dry_run(capsys, "stability", "stability.yaml")
    counts = Counter((r["task"], r["model"], r["strategy"]) for r in runs)
    expected = {(task, m, s): n for task, n in (("vqa", 7), ("retrieval", 9)) for m in PAPER_MODELS
                for s in ("partial", "full", "lora")}
    assert counts == expected and len(runs) == 4 * 3 * (7 + 9) == 192
    for r in runs:  # slight variation around the paper's protocol, one fixed seed
        base = 5e-5 if r["task"] == "vqa" else 1e-5
        assert base / 2 <= float(r["lr"]) <= base * 2 and r["seed"] == "0" and r["epochs"] == "200"
        assert r["wd"] == ("0.1" if r["task"] == "vqa" else "0") and r["optimizer"] == "adam"
    vqa = [tuple(r["perturbed"]) for r in runs if (r["task"], r["model"], r["strategy"]) == ("vqa", "biomedclip", "lora")]
    assert len(set(vqa)) == 7


def test_ablation_organ_dry_run_is_table_6(workdir, capsys, offline):
    runs = dry_run(capsys, "ablation", "ablation-organ.yaml")
    grid = Counter((r["dataset"], r["model"], r["strategy"], r["extra"][0]) for r in runs)
    fractions = [f"train_fraction={f}" for f in (0.05, 0.1, 0.25, 0.5, 1.0)]
    assert set(grid) == {(d, m, s, f) for d in ("organcmnist", "organamnist") for m in ("clip-vit-b32", "biomedclip")
                         for s in ("partial", "full", "lora") for f in fractions}
    assert len(runs) == 60 and set(grid.values()) == {1}
    for r in runs:
        assert r["lr"] == ("1e-05" if r["model"] == "biomedclip" else "5e-05")
        assert (r["head"], r["prompts"], r["wd"], r["optimizer"], r["size"]) == ("prompt", "paper", "0.001", "adam", "224")


def test_per_task_trials_must_name_every_task(tmp_path, workdir, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("kind: stability\ntrials: {vqa: 7}\ndefaults: {model: clip-vit-b32, dataset: breastmnist}\n"
                    "grid: {strategy: [lora]}\n")
    assert main(["stability", "--spec", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"trials gives no count for task classification; add classification: N to trials", err)
    assert len(err.strip().splitlines()) == 1


def test_a_figure_2_summary_shows_each_tasks_headline_metric():
    import pandas as pd

    from medvlm.studies.summary import by_task, format_summary, primary_metric, summary_table

    rows = []
    for task, metric, values in (("vqa", "test_acc", [0.5, 0.6, 0.7]), ("retrieval", "test_image_to_text_R1", [0.1, 0.3])):
        for v in values:
            rows.append({"group": f"m · d-{task} · lora", "model": "m", "dataset": f"d-{task}", "task": task,
                         "strategy": "lora", "train_fraction": 1.0, metric: v, "test_f1": 0.0})
    table = summary_table(pd.DataFrame(rows))
    assert [(suffix, primary_metric(part)) for suffix, part in by_task(table)] == [
        ("_vqa", "test_acc"), ("_retrieval", "test_image_to_text_R1")]
    text = format_summary("stability", table)
    assert "test_acc mean ± std" in text and "0.6000 ± 0.1000" in text
    assert "test_image_to_text_R1 mean ± std" in text and "0.2000 ± 0.1414" in text
