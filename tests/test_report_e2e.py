"""End to end: an ablation and a stability study on the real BreastMNIST with tiny local models
(mirrored under zoo names, so one is general and one medical), then `mlflow run . -e report`
produces the tables and PNGs in the report run and prints the markdown."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.report.config import ReportConfig
from medvlm.testing import save_tiny_open_clip
from tests.conftest import BREAST_ROOT, REPO, needs_breastmnist

pytestmark = needs_breastmnist
EXPERIMENT = "e2e-report"
RUN_FLAGS = {"dataset": "breastmnist", "size": 28, "data_root": str(BREAST_ROOT), "epochs": 1,
             "register_adapter": False, "strategy": "linear", "experiment": EXPERIMENT}


def report_project(root: Path) -> Path:
    """The repository when its MLproject has the `report` entry point; until it is regenerated, a copy
    of the entry point with its parameters rendered from ReportConfig as the repository renders RunConfig's."""
    if "  report:" in (REPO / "MLproject").read_text():
        return REPO
    project = root / "project"
    (project / "entrypoints").mkdir(parents=True)
    shutil.copy(REPO / "entrypoints" / "report.py", project / "entrypoints" / "report.py")
    params = list(ReportConfig.model_fields)
    defaults = {p: "" if ReportConfig.model_fields[p].default_factory else str(ReportConfig.model_fields[p].default)
                for p in params}
    lines = ["name: medvlm-report", "", "entry_points:", "  report:", "    parameters:"]
    lines += [f'      {p}: {{type: string, default: "{defaults[p]}"}}' for p in params]
    lines.append(f'    command: "python entrypoints/report.py {" ".join(f"--{p} {{{p}}}" for p in params)}"')
    (project / "MLproject").write_text("\n".join(lines) + "\n")
    return project


@pytest.fixture(scope="module")
def studies_and_report(tmp_path_factory, new_mlflow_store):
    root = tmp_path_factory.mktemp("report-e2e")
    uri = new_mlflow_store(root / "mlflow.db")
    save_tiny_open_clip(root / "weights" / "clip-vit-b32", seed=0)
    save_tiny_open_clip(root / "weights" / "biomedclip", seed=1)
    env = {"MLFLOW_TRACKING_URI": uri, "MEDVLM_WEIGHTS": str(root / "weights"), "MEDVLM_CACHE": str(root / "cache"),
           "MEDVLM_CHECKPOINTS": str(root / "ckpt")}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for key, value in env.items():
            mp.setenv(key, value)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        flags = [f"--{k}={v}" for k, v in RUN_FLAGS.items()]
        assert main(["ablation", *flags, "--model", "biomedclip", "--fractions", "0.25,1.0", "--study", "abl"]) == 0
        spec = root / "stability.yaml"
        spec.write_text(yaml.safe_dump({"kind": "stability", "name": "stab", "defaults": {**RUN_FLAGS, "model": "clip-vit-b32"},
                                        "trials": 2}))
        assert main(["stability", "--spec", str(spec)]) == 0

        clean = {k: v for k, v in os.environ.items()
                 if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}  # set_experiment exports one
        proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(report_project(root)), "-e", "report",
                               "--env-manager", "local", "--experiment-name", EXPERIMENT, "-P", f"experiment={EXPERIMENT}",
                               "-P", "resamples=100", "-P", "seed=1"],
                              env={**clean, **env}, cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        (report,) = client.search_runs([experiment], "tags.`medvlm.report` = 'true'")
        folder = Path(mlflow.artifacts.download_artifacts(run_id=report.info.run_id, dst_path=str(root / "report"),
                                                          tracking_uri=uri))
        children = {kind: [r for r in client.search_runs([experiment], f"tags.`medvlm.study_kind` = '{kind}'")
                           if r.data.tags.get("medvlm.study_role") != "parent"] for kind in ("ablation", "stability")}
        yield proc.stdout, report, folder, children


def test_the_report_is_the_project_run_and_holds_tables_and_plots(studies_and_report):
    stdout, report, folder, _ = studies_and_report
    assert report.info.status == "FINISHED" and report.data.tags["mlflow.project.entryPoint"] == "report"
    assert report.data.params["resamples"] == "100"
    markdown = (folder / "report.md").read_text()
    assert markdown.strip() in stdout  # printed to the terminal as well
    for section in ("## Recommendation", "## Models × strategies", "## Medical minus general",
                    "## Training-data ablation", "## Stability", "## Missing"):
        assert section in markdown
    page = (folder / "report.html").read_text()  # the same report, one page that MLflow's artifact view renders
    for png in ("ablation_curve.png", "stability_std_auc.png", "gap_classification_linear_vs_linear.png"):
        assert (folder / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{png[:-4]}](plots/{png})" in markdown
        assert f'src="data:image/png;base64,{base64.b64encode((folder / "plots" / png).read_bytes()).decode()}"' in page
    assert {p.name for p in (folder / "tables").glob("*.csv")} >= {"ablation.csv", "stability.csv", "gaps.csv",
                                                                  "recommendations.csv", "comparisons.csv"}


def test_ablation_cells_are_the_study_runs_metrics(studies_and_report):
    _, _, folder, children = studies_and_report
    ablation = pd.read_csv(folder / "tables" / "ablation.csv")
    logged = {float(r.data.params["train_fraction"]): r.data.metrics["test_auc"] for r in children["ablation"]}
    assert sorted(logged) == [0.25, 1.0]
    assert dict(zip(ablation["train_fraction"], ablation["value"])) == logged
    assert (ablation["ci_low"] <= ablation["value"]).all() and (ablation["value"] <= ablation["ci_high"]).all()


def test_stability_and_gap_pool_the_perturbed_runs(studies_and_report):
    stdout, _, folder, children = studies_and_report
    stability = pd.read_csv(folder / "tables" / "stability.csv").iloc[0]
    aucs = [r.data.metrics["test_auc"] for r in children["stability"]]
    assert (stability["model"], stability["n"]) == ("clip-vit-b32", 2)
    assert stability["value"] == pytest.approx(np.mean(aucs)) and stability["std"] == pytest.approx(np.std(aucs, ddof=1))
    gap = pd.read_csv(folder / "tables" / "gaps.csv")
    medical_full = next(r.data.metrics["test_auc"] for r in children["ablation"] if r.data.params["train_fraction"] == "1.0")
    (row,) = gap.itertuples()
    assert (row.a_model, row.b_model, row.medical_in_domain) == ("biomedclip", "clip-vit-b32", "ID")
    assert row.difference == pytest.approx(medical_full - np.mean(aucs))
    assert row.ci_low <= row.difference <= row.ci_high and 0 < row.p_value <= 1
    assert "breastmnist** (classification, AUC): best" in stdout
