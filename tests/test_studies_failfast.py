"""Studies fail fast: a preflight locates every model and dataset before any trial (and in --dry-run),
and a study stops once `max_same_failures` trials in a row failed with the same error."""

from __future__ import annotations

import json

import optuna
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.testing import save_tiny_open_clip
from tests.conftest import BREAST_ROOT, SHARED_DATA, needs_breastmnist

pytestmark = needs_breastmnist


def stability(model: str, *extra: str) -> list[str]:
    return ["stability", "--model", model, "--dataset", "breastmnist", "--size", "28", "--data_root", str(SHARED_DATA),
            "--strategies", "linear", "--trials", "4", "--epochs", "1", "--study", "ff", *extra]


def test_dry_run_and_run_report_a_missing_model_before_any_trial(bare_workdir, capsys, offline, monkeypatch):
    monkeypatch.delenv("MEDVLM_WEIGHTS", raising=False)
    assert main(stability("biomedclip", "--dry-run")) == 2
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == "4 experiments"  # the plan is listed, then what is missing
    (line,) = err.strip().splitlines()
    assert "1 of the study's 2 models and datasets cannot be found, so no trial was started: model biomedclip" in line
    assert "$MEDVLM_WEIGHTS/biomedclip/" in line and "save_tiny_open_clip" in line
    assert main(stability("biomedclip")) == 2
    assert "model biomedclip" in capsys.readouterr().err
    assert not (bare_workdir / "optuna.db").exists() and not (bare_workdir / "mlflow.db").exists()


def test_dry_run_lists_where_each_model_and_dataset_comes_from(workdir, capsys, tiny_model_dir):
    assert main(stability(f"local-dir:{tiny_model_dir}", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert f"model local-dir:{tiny_model_dir}: {tiny_model_dir}" in out
    assert f"classification data breastmnist at size 28 in {SHARED_DATA}: {BREAST_ROOT / 'breastmnist.npz'}" in out


def test_a_study_whose_model_cannot_load_stops_after_k_identical_failures(workdir, capsys):
    broken = save_tiny_open_clip(workdir / "broken")  # found by the preflight; its weights do not fit its config
    config = json.loads((broken / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 16
    (broken / "open_clip_config.json").write_text(json.dumps(config))
    assert main(stability(f"local-dir:{broken}", "--max_same_failures", "2")) == 2
    err = capsys.readouterr().err
    error = err.splitlines()[[i for i, line in enumerate(err.splitlines()) if "trial 0 failed: " in line][0]].split("trial 0 failed: ")[1]
    assert "cannot load weights" in error and err.count(error) == 1  # printed once
    assert "trial 1 failed: the same error as trial 0" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("medvlm: error: study 'ff' stopped: trials 0, 1 failed in a row with the same error")
    assert "so 2 trials were not run; they stay queued" in last
    study = optuna.load_study(study_name="ff", storage="sqlite:///optuna.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    parent = MlflowClient().get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FAILED" and "stopped" in parent.data.tags["medvlm.error"]
