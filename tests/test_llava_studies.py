"""Studies and report on the tiny LLaVA family: a 2-trial stability study of `mlp` for LLaVA-1.5 and
LLaVA-Med (zoo names, read from the weights mirror) and a data-fraction ablation on real VQA-RAD rows,
then the report's LLaVA-Med − LLaVA gap with ID/OOD, its heatmap and the stability and ablation tables."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm import names
from tests.conftest import SHARED_DATA
from tests.llava_tiny import llava_family  # noqa: F401  (fixture)

EXPERIMENT = "llava-study"


@pytest.fixture(scope="module")
def report(llava_family, tmp_path_factory, new_mlflow_store):
    root = tmp_path_factory.mktemp("llava-study")
    (llava_family["root"] / "llava-1.5-7b").symlink_to(llava_family["hf"])
    uri = new_mlflow_store(root / "mlflow.db")
    spec = root / "stability.yaml"
    spec.write_text(yaml.safe_dump({
        "kind": "stability", "name": "llava-stab", "trials": 2, "grid": {"model": ["llava-1.5-7b", "llava-med"]},
        "space": {"lr": {"factor": 2}},
        "defaults": {"task": "vqa", "dataset": "vqa_rad", "data_root": str(SHARED_DATA), "max_rows": 6, "epochs": 1,
                     "batch_size": 3, "eval_batch_size": 6, "max_new_tokens": 4, "lr": 1e-3, "strategy": "mlp",
                     "register_adapter": False, "experiment": EXPERIMENT}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MEDVLM_CHECKPOINTS", str(root / "ckpt"))
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        assert main(["stability", "--spec", str(spec)]) == 0
        defaults = yaml.safe_load(spec.read_text())["defaults"]
        flags = [f"--{k}={v}" for k, v in {**defaults, "model": "llava-med"}.items()]
        assert main(["ablation", *flags, "--fractions", "0.5,1.0", "--study", "llava-abl"]) == 0
        assert main(["report", "--experiment", EXPERIMENT, "--resamples", "100"]) == 0
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        (run,) = client.search_runs([experiment], "tags.`medvlm.report` = 'true'")
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(root / "report"),
                                                          tracking_uri=uri))
        trials, ablation = ([r for r in client.search_runs([experiment], f"tags.`medvlm.study_kind` = '{kind}'")
                             if r.data.tags.get("medvlm.study_role") != "parent"] for kind in ("stability", "ablation"))
        yield folder, trials, ablation


def test_stability_runs_every_trial_of_both_models(report):
    _, trials, _ = report
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert sorted(r.data.tags["medvlm.model"] for r in trials) == ["llava-1.5-7b"] * 2 + ["llava-med"] * 2
    for model in ("llava-1.5-7b", "llava-med"):  # two perturbed learning rates per model
        assert len({r.data.params["lr"] for r in trials if r.data.tags["medvlm.model"] == model}) == 2
    stability = pd.read_csv(report[0] / "tables" / "stability.csv")
    assert sorted(stability["model"]) == ["llava-1.5-7b", "llava-med"] and (stability["n"] == 2).all()


def test_report_shows_the_llava_med_minus_llava_gap_with_id_ood(report):
    folder, trials, _ = report
    (gap,) = pd.read_csv(folder / "tables" / "gaps.csv").itertuples()
    assert (gap.a_model, gap.b_model, gap.medical_in_domain) == ("llava-med", "llava-1.5-7b", "ID")
    means = {m: sum(r.data.metrics["test_acc"] for r in trials if r.data.tags["medvlm.model"] == m) / 2
             for m in ("llava-med", "llava-1.5-7b")}
    assert gap.difference == pytest.approx(means["llava-med"] - means["llava-1.5-7b"])
    assert gap.ci_low <= gap.difference <= gap.ci_high  # paired: same VQA-RAD test rows for both models
    assert (folder / "plots" / "gap_vqa_mlp_vs_mlp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_trains_on_each_fraction_of_the_training_rows(report):
    folder, _, ablation = report
    assert sorted((r.data.params["train_fraction"], r.data.metrics[names.examples("train")]) for r in ablation) == [("0.5", 3), ("1.0", 6)]
    assert all(r.info.status == "FINISHED" and r.data.tags["medvlm.model"] == "llava-med" for r in ablation)
    table = pd.read_csv(folder / "tables" / "ablation.csv")
    assert sorted(table["train_fraction"]) == [0.5, 1.0]


def test_vlm_rival_spec_is_the_papers_vqa_grid(tmp_path, monkeypatch, capsys, offline):
    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDVLM_WEIGHTS", raising=False)
    # offline with no weights: the dry run lists the grid, then the preflight names every missing model (exit 2)
    assert main(["sweep", "--spec", str(REPO / "sweeps" / "vlm-rival.yaml"), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "model llava-1.5-7b" in err and "model llava-med" in err
    lines = out.strip().splitlines()
    assert lines[-1] == "42 experiments"
    listed = {tuple(line.split("  |  ")[0].split(maxsplit=2)[2].split(" · ")) for line in lines[1:-1]}
    strategies = [("zeroshot",), ("mlp",)] + [("lora", f"lora_parts={p}") for p in ("v", "l", "vm", "lm", "vml")]
    assert listed == {(m, d, *s) for m in ("llava-1.5-7b", "llava-med") for d in ("vqa_rad", "slake", "pathvqa")
                      for s in strategies}
    assert not (tmp_path / "mlflow.db").exists()
