"""Study specs: the paper grid validates and dry-runs; bad specs die in one line before anything starts."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import qmc

from medvlm.cli import main
from medvlm.errors import ConfigError
from medvlm.studies.plan import build_plan, describe, plan_digest, trial_config
from medvlm.studies.spec import Perturbation, expand_cells, load_study_config
from medvlm.studies.stability import unit_points
from medvlm.zoo import zoo_entries

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def spec_file(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_midl2026_spec_is_the_whole_paper_grid_and_dry_runs(bare_workdir, capsys, offline, monkeypatch):
    monkeypatch.delenv("MEDVLM_WEIGHTS", raising=False)
    spec = yaml.safe_load((SWEEPS / "midl2026.yaml").read_text())
    models = spec["grid"][0]["model"]
    assert models == ["clip-vit-b32", "biomedclip", "pmc-clip", "cxr-clip"]
    missing = [m for m in models if m not in zoo_entries()]
    code, out, err = run_cli(["sweep", "--spec", str(SWEEPS / "midl2026.yaml"), "--dry-run"], capsys)
    if missing:  # a zoo entry not merged yet: the spec must be rejected, naming it
        assert code == 2 and f"unknown model '{missing[0]}'" in err and len(err.strip().splitlines()) == 1
        return
    assert code == 2  # offline, with no mirror: the dry run lists the plan, then every missing model and dataset
    assert len(err.strip().splitlines()) == 1 and "no trial was started" in err
    assert all(f"model {m}" in err for m in models) and "classification data organamnist at size 224" in err
    expected = {(t, m, d, s) for m in models for s in ("zeroshot", "partial", "full", "lora")
                for t, d in [("classification", d) for d in ("pneumoniamnist", "breastmnist", "organamnist", "organcmnist")]
                + [("retrieval", f"roco · subset={sub}") for sub in ("radiology", "non-radiology", "mixed")]
                + [("vqa", d) for d in ("vqa_rad", "slake")]}
    assert len(expected) == 4 * 9 * 4 == 144
    lines = out.strip().splitlines()
    assert lines[0] == "study 'midl2026' (sweep): 144 experiments" and lines[-1] == "144 experiments"
    listed = set()
    for line in lines[1:-1]:
        number, task, rest = line.split(maxsplit=2)
        model, dataset, strategy, *extra = rest.split("  |  ")[0].split(" · ")
        listed.add((task, model, " · ".join([dataset, *extra]), strategy))
    assert listed == expected
    assert not (bare_workdir / "optuna.db").exists() and not (bare_workdir / "mlflow.db").exists()  # a dry run starts nothing


@pytest.mark.parametrize("name", ["stability-classification"])
def test_shipped_study_specs_validate(name, workdir, capsys, offline):
    spec = yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())
    code, out, err = run_cli([spec["kind"], "--spec", str(SWEEPS / f"{name}.yaml"), "--dry-run"], capsys)
    missing = [m for m in spec["grid"]["model"] if m not in zoo_entries()]
    if missing:
        assert code == 2 and missing[0] in err
        return
    assert code == 2 and all(f"model {m}" in err for m in spec["grid"]["model"])  # offline: weights missing
    cells = len(spec["grid"]["model"]) * len(spec["grid"]["strategy"])
    per_cell = spec["trials"] if spec["kind"] == "stability" else len(spec["fractions"])
    assert out.strip().splitlines()[-1] == f"{cells * per_cell} experiments"


BAD_SPECS = [
    ({"defaults": {"dataset": "breastmnist"}, "grid": {"model": ["clip-vit-b32", "no-such-clip"]}},
     "cell 2 (no-such-clip · breastmnist · zeroshot): unknown model 'no-such-clip'"),
    ({"defaults": {"model": "clip-vit-b32"}, "grid": {"datset": ["breastmnist"]}},
     "grid block 1: unknown parameter 'datset' (did you mean 'dataset'?)"),
    ({"defaults": {"model": "clip-vit-b32", "dataset": "breastmnist"}, "grids": {"seed": [1, 2]}},
     "unknown parameter 'grids' (did you mean 'grid'?)"),
    ({"defaults": {"model": "clip-vit-b32", "dataset": "breastmnist"}, "grid": []}, "invalid parameter grid=[]"),
    ({"defaults": {"dataset": "breastmnist"}, "grid": {"model": []}}, "invalid parameter grid.0.model=[]"),
    ({"defaults": {"model": "clip-vit-b32", "dataset": "breastmnist"}, "grid": {"strategy": ["lora"]},
      "overrides": [{"match": {"strategy": "lorra"}, "set": {"lr": 1e-5}}]}, "override 1 (match {'strategy': 'lorra'}) matches no cell"),
    ({"defaults": {"model": "clip-vit-b32", "dataset": "breastmnist"}, "grid": {"lr": ["fast"]}},
     "cell 1 (lr=fast): invalid parameter lr='fast'"),
    ({"defaults": {"model": "clip-vit-b32", "dataset": "breastmnist"}, "grid": {"seed": [1, 1]}}, "cell 2 (seed=1) repeats cell 1"),
    ({"defaults": {"model": "clip-vit-b32", "dataset": "breastmnist"}, "grid": {"seed": [1]}, "exclude": [{"seed": 1}]},
     "every cell is excluded"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS)
def test_bad_spec_is_rejected_in_one_line_before_anything_starts(spec, message, tmp_path, bare_workdir, capsys):
    path = spec_file(tmp_path, spec)
    code, out, err = run_cli(["sweep", "--spec", path], capsys)
    assert code == 2
    assert err.startswith(f"medvlm: error: spec {path}: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (bare_workdir / "optuna.db").exists() and not (bare_workdir / "mlflow.db").exists()


def test_study_kind_and_flag_clashes_are_named(tmp_path, workdir, capsys):
    stability = spec_file(tmp_path, {"kind": "stability", "defaults": {"model": "clip-vit-b32", "dataset": "breastmnist"},
                                     "grid": {"strategy": ["lora"]}})
    code, _, err = run_cli(["ablation", "--spec", stability], capsys)
    assert code == 2 and "is a 'stability' spec; run it with `medvlm stability" in err
    code, _, err = run_cli(["stability", "--spec", stability, "--strategy", "full", "--dry-run"], capsys)
    assert code == 2 and "--strategy is a grid axis" in err
    code, _, err = run_cli(["stability", "--model", "clip-vit-b32", "--dataset", "breastmnist", "--dry-run"], capsys)
    assert code == 2 and "zeroshot does not train" in err


def test_defaults_grid_overrides_and_exclude_make_the_cells(tmp_path):
    study = load_study_config("sweep", spec_file(tmp_path, {
        "name": "t", "defaults": {"model": "clip-vit-b32", "dataset": "breastmnist", "lr": 1e-3, "epochs": 3},
        "grid": [{"strategy": ["partial", "full"], "seed": [0, 1]}, {"strategy": ["zeroshot"]}],
        "overrides": [{"match": {"strategy": "full"}, "set": {"lr": 1e-5}}],
        "exclude": [{"strategy": "partial", "seed": 1}]}), {})
    cells = expand_cells(study, {"epochs": "2"})
    got = [(c.config.strategy, c.config.seed, c.config.lr, c.config.epochs, c.config.study) for c in cells]
    assert got == [("partial", 0, 1e-3, 2, "t"), ("full", 0, 1e-5, 2, "t"), ("full", 1, 1e-5, 2, "t"), ("zeroshot", 0, 1e-3, 2, "t")]
    assert [c.label for c in cells][:2] == ["clip-vit-b32 · breastmnist · partial · seed=0", "clip-vit-b32 · breastmnist · full · seed=0"]
    assert cells[1].group == cells[2].group == "clip-vit-b32 · breastmnist · full"  # seeds are replicates of one group


def test_ablation_crosses_every_cell_with_the_fractions():
    study = load_study_config("ablation", None, {"fractions": "0.1,0.5,1"})
    plan = build_plan(study, {"model": "clip-vit-b32", "dataset": "breastmnist", "strategy": "lora"})
    assert [t.config.train_fraction for t in plan] == [0.1, 0.5, 1.0]
    assert [t.params for t in plan] == [{"cell": 0}, {"cell": 1}, {"cell": 2}]
    assert study.name == "ablation-clip-vit-b32-breastmnist"


def test_qmc_points_are_optunas_seeded_scrambled_halton():
    points = unit_points(["a", "b"], 9, seed=3)
    reference = qmc.Halton(2, scramble=True, seed=3).random(9)
    assert np.allclose([[p["a"], p["b"]] for p in points], reference)
    assert points == unit_points(["a", "b"], 9, seed=3)  # every worker computes the same plan


def test_stability_plan_perturbs_within_the_declared_space_without_duplicates():
    study = load_study_config("stability", None, {"trials": 9, "strategies": "partial,lora"})
    study.space = {"lr": Perturbation(factor=2), "batch_size": Perturbation(choices=[16, 32, 64]),
                   "weight_decay": Perturbation(low=0.0, high=1e-3), "seed": Perturbation(low=0, high=99)}
    plan = build_plan(study, {"model": "clip-vit-b32", "dataset": "breastmnist", "lr": "1e-4"})
    assert len(plan) == 18
    assert len({tuple(sorted(t.params.items())) for t in plan}) == 18
    for cell in (0, 1):
        trials = [t for t in plan if t.params["cell"] == cell]
        lrs = np.array([t.config.lr for t in trials])
        assert np.all((lrs >= 0.5e-4) & (lrs <= 2e-4))
        # low discrepancy: the 9 log-lr values fall one per ninth of [log lr/2, log 2 lr)
        bins = np.floor((np.log2(lrs / 1e-4) + 1) / 2 * 9).astype(int)
        assert sorted(bins) == list(range(9))
        assert {t.config.batch_size for t in trials} == {16, 32, 64}
        assert all(0 <= t.config.seed <= 99 and 0 <= t.config.weight_decay <= 1e-3 for t in trials)
    first, second = ([t.params for t in plan if t.params["cell"] == c] for c in (0, 1))
    assert [dict(p, cell=0) for p in second] == first  # every strategy gets the same perturbations
    cells = [t.cell for t in plan[::9]]
    assert all(trial_config(cells, t.params) == t.config for t in plan)  # a trial is rebuilt from its params alone
    assert plan_digest(plan) == plan_digest(build_plan(study, {"model": "clip-vit-b32", "dataset": "breastmnist", "lr": "1e-4"}))
    assert "18 experiments" in describe(study, plan)


@pytest.mark.parametrize("form,base,integer,low,high", [
    ({"factor": 2}, 1e-4, False, 5e-5, 2e-4), ({"factor": 2}, 64, True, 32, 128),
    ({"low": 0, "high": 9}, 0, True, 0, 9), ({"low": 1e-6, "high": 1e-2, "log": True}, 0, False, 1e-6, 1e-2)])
def test_perturbation_values_stay_in_their_distribution(form, base, integer, low, high):
    p = Perturbation(**form)
    dist = p.distribution(base, integer)
    values = [p.value(u, base, integer) for u in np.linspace(0, 0.999999, 101)]
    assert min(values) == pytest.approx(low) and max(values) <= high * (1 + 1e-9)
    assert all(dist._contains(dist.to_internal_repr(v)) for v in values)
    if integer and "factor" not in form:
        assert sorted(set(values)) == list(range(int(low), int(high) + 1))  # every integer equally reachable
    if form.get("log") or "factor" in form:
        assert values[50] == pytest.approx(math.sqrt(low * high), rel=0.05)


def test_perturbation_needs_exactly_one_form():
    for bad in ({}, {"factor": 2, "low": 0, "high": 1}, {"low": 1, "high": 0}, {"factor": 0.5}, {"choices": []}):
        with pytest.raises(ValueError):
            Perturbation(**bad)
    with pytest.raises(ConfigError, match="factor needs a positive base"):
        Perturbation(factor=2).value(0.5, 0.0, False)


def test_grid_product_order_is_the_spec_order():
    study = load_study_config("sweep", None, {})
    study.grid = [{"model": ["clip-vit-b32", "biomedclip"], "strategy": ["zeroshot", "lora"]}]
    cells = expand_cells(study, {"dataset": "breastmnist"})
    assert [(c.config.model, c.config.strategy) for c in cells] == list(itertools.product(["clip-vit-b32", "biomedclip"], ["zeroshot", "lora"]))
