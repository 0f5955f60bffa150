"""Fidelity: a report over tracked runs with known per-sample predictions. Every table cell equals
the logged metric (or the mean of the logged metrics), every interval equals an independent numpy
bootstrap with the same seed, missing cells show "—" and are listed, and nothing is invented."""

from __future__ import annotations

import io
import zlib
from contextlib import redirect_stdout
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import rankdata

from medvlm.cli import main
from medvlm.config import build_config
from medvlm.errors import ConfigError, TrainingError
from medvlm.report.config import report_config
from medvlm.report.select import select_runs
from medvlm.names import REPORT_RUNS
from medvlm.tracking.session import tracked_run
from tests.report_fixtures import EXPERIMENT, binary_probs, log_classification_run, log_vqa_run, vqa_test_rows

N, B, SEED = 80, 100, 3


def classification_reference(labels: np.ndarray, probs: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """AUC (Mann-Whitney from average ranks), ACC and F1 of every resample at once, in plain numpy:
    an implementation independent of medvlm's metric code and of scikit-learn."""
    y, score = labels[rows], probs[:, 1][rows]
    ranks = rankdata(score, axis=1)
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    auc = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    pred = score > 0.5
    tp, fp, fn = (pred & (y == 1)).sum(1), (pred & (y == 0)).sum(1), (~pred & (y == 1)).sum(1)
    tn = (~pred & (y == 0)).sum(1)
    return {"test_auc": auc, "test_acc": (pred == y).mean(axis=1),
            "test_f1": np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0),
            "test_auc_hard": (tp / positives + tn / negatives) / 2}


def interval(values: np.ndarray) -> tuple[float, float]:
    return tuple(np.percentile(values, [2.5, 97.5]))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, new_mlflow_store):
    """Runs of three zoo models on one synthetic BreastMNIST-sized test set, a stability study's
    children, an ablation fraction, a retrieval run, two VQA runs and one failed run; then the report."""
    root = tmp_path_factory.mktemp("report")
    uri = new_mlflow_store(root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        labels = np.repeat([0, 1], N // 2)
        probs, ids = {}, {}

        def classification(key, model, strategy, skill, seed=0, **kw):
            probs[key] = binary_probs(labels, skill, seed=zlib.crc32(key.encode()))
            ids[key] = log_classification_run(model, strategy, probs[key], labels, seed=seed, **kw)

        classification("clip-zs", "clip-vit-b32", "zeroshot", 0.3)
        classification("clip-lora", "clip-vit-b32", "lora", 1.5)
        classification("bio-zs", "biomedclip", "zeroshot", 1.2)
        client = MlflowClient()
        parent = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id, run_name="stability · stab")
        client.log_param(parent.info.run_id, "study.trials_planned", 3)
        client.set_tag(parent.info.run_id, "medvlm.study_role", "parent")
        client.set_terminated(parent.info.run_id)
        for trial in (0, 1):
            tags = {"mlflow.parentRunId": parent.info.run_id, "medvlm.trial": str(trial),
                    "medvlm.group": "biomedclip · breastmnist · lora", "medvlm.study_kind": "stability"}
            classification(f"bio-lora-{trial}", "biomedclip", "lora", 1.4 + trial, seed=trial, study="stab",
                           extra_tags=tags)
        classification("quilt-lora", "quiltnet", "lora", 0.8)
        classification("quilt-lora-half", "quiltnet", "lora", 0.4, train_fraction=0.5)
        retrieval_cfg = build_config({"model": "clip-vit-b32", "dataset": "roco", "task": "retrieval",
                                      "subset": "radiology", "experiment": EXPERIMENT})
        with tracked_run(retrieval_cfg) as run:
            mlflow.set_tag("medvlm.warning.small_gallery", "the test gallery holds only 5 captions")
            mlflow.log_metrics({"test_image_to_text_R1": 0.125, "test_image_to_text_R5": 0.25,
                                "test_image_to_text_R10": 0.5, "test_text_to_image_R1": 0.0625})
        ids["retrieval"] = run.info.run_id
        test = vqa_test_rows(40)
        rng = np.random.default_rng(0)
        correct = {"clip": rng.random(40) < 0.4, "bio": rng.random(40) < 0.8}
        ids["vqa-clip"] = log_vqa_run("clip-vit-b32", "frozen", test, correct["clip"])
        ids["vqa-bio"] = log_vqa_run("biomedclip", "frozen", test, correct["bio"])
        failed = build_config({"model": "clip-vit-b32", "dataset": "breastmnist", "strategy": "full",
                               "experiment": EXPERIMENT})
        with pytest.raises(TrainingError), tracked_run(failed) as run:
            raise TrainingError("loss is NaN")
        ids["failed"] = run.info.run_id

        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["report", "--experiment", EXPERIMENT, "--resamples", str(B), "--seed", str(SEED),
                         "--output", str(root / "out")]) == 0
        reports = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                     "tags.`medvlm.report` = 'true'")
        yield {"client": client, "labels": labels, "probs": probs, "ids": ids, "correct": correct, "test": test,
               "printed": out.getvalue(), "folder": root / "out", "report": reports, "parent": parent.info.run_id}


def table(tracked, name: str) -> pd.DataFrame:
    return pd.read_csv(tracked["folder"] / "tables" / f"{name}.csv")


def rows_of(run_id: str, frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["run_ids"] == run_id]


def resamples() -> np.ndarray:
    rows = np.random.default_rng(SEED).integers(0, N, size=(B, N))
    labels = np.repeat([0, 1], N // 2)
    assert all(len(set(labels[r])) == 2 for r in rows)  # no redraw needed, so none in the reference either
    return rows


def test_the_report_run_holds_the_markdown_csvs_and_pngs_and_the_markdown_is_printed(tracked):
    (report,) = tracked["report"]
    client = tracked["client"]
    names = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"report.md", "tables", "plots"} <= names
    csvs = {Path(a.path).name for a in client.list_artifacts(report.info.run_id, "tables")}
    assert {"zeroshot_classification.csv", "finetune_classification_breastmnist_auc.csv", "comparisons.csv",
            "gaps.csv", "stability.csv", "ablation.csv", "recommendations.csv", "zeroshot_retrieval.csv"} <= csvs
    pngs = {Path(a.path).name for a in client.list_artifacts(report.info.run_id, "plots")}
    assert {"gap_classification_zeroshot_vs_zeroshot.png", "gap_classification_lora_vs_zeroshot.png",
            "ablation_curve.png", "stability_std_auc.png"} <= pngs
    markdown = (tracked["folder"] / "report.md").read_text()
    assert tracked["printed"].strip() == markdown.strip()
    assert report.data.params["resamples"] == str(B) and report.data.metrics[REPORT_RUNS] == 10


def test_every_zero_shot_cell_is_the_logged_metric_and_its_interval_an_independent_bootstrap(tracked):
    frame = table(tracked, "zeroshot_classification")
    rows = resamples()
    for key in ("clip-zs", "bio-zs"):
        run = tracked["client"].get_run(tracked["ids"][key])
        reference = classification_reference(tracked["labels"], tracked["probs"][key], rows)
        cells = rows_of(run.info.run_id, frame).set_index("metric")
        assert set(cells.index) == {"test_auc", "test_acc", "test_f1", "test_auc_hard"}
        for metric, values in reference.items():
            assert cells.loc[metric, "value"] == run.data.metrics[metric]  # the logged number, not a recomputation
            assert (cells.loc[metric, "ci_low"], cells.loc[metric, "ci_high"]) == pytest.approx(interval(values), abs=1e-12)


def test_markdown_cells_show_those_numbers_and_missing_cells_show_a_dash(tracked):
    markdown = (tracked["folder"] / "report.md").read_text()
    frame = table(tracked, "zeroshot_classification").set_index(["run_ids", "metric"])
    bio = frame.loc[(tracked["ids"]["bio-zs"], "test_auc")]
    assert f"| breastmnist | biomedclip | medical | ID | {bio.value:.3f} [{bio.ci_low:.3f}, {bio.ci_high:.3f}] |" in markdown
    assert "| breastmnist | quiltnet | medical | OOD | — | — | — | — |" in markdown
    assert "| AUC (hard, paper code) |" in markdown  # the paper-comparable AUC, labelled as such
    assert "classification · breastmnist · quiltnet · zeroshot" in markdown.split("## Missing")[1]
    assert "| breastmnist | clip-vit-b32 | general | OOD |" in markdown


def test_models_by_strategies_marks_best_and_second_and_pools_several_runs(tracked):
    client, ids = tracked["client"], tracked["ids"]
    frame = table(tracked, "finetune_classification_breastmnist_auc")
    logged = {key: client.get_run(ids[key]).data.metrics["test_auc"]
              for key in ("clip-zs", "clip-lora", "bio-zs", "bio-lora-0", "bio-lora-1", "quilt-lora")}
    bio_lora = [logged["bio-lora-0"], logged["bio-lora-1"]]
    expected = {"clip-zs": logged["clip-zs"], "clip-lora": logged["clip-lora"], "bio-zs": logged["bio-zs"],
                "quilt-lora": logged["quilt-lora"], "bio-lora": np.mean(bio_lora)}
    pooled = frame[frame["n"] == 2].iloc[0]
    assert pooled["run_ids"] == f"{ids['bio-lora-0']};{ids['bio-lora-1']}"
    assert pooled["value"] == pytest.approx(np.mean(bio_lora), abs=1e-15)
    assert pooled["std"] == pytest.approx(np.std(bio_lora, ddof=1), abs=1e-15)
    ordered = sorted(expected, key=expected.get, reverse=True)
    marks = {key: frame[np.isclose(frame["value"], v, rtol=0, atol=1e-15)]["mark"].fillna("").iloc[0]
             for key, v in expected.items()}
    assert marks[ordered[0]] == "best" and marks[ordered[1]] == "second"
    assert all(marks[k] not in ("best", "second") for k in ordered[2:])
    assert len(frame) == 5 and 0.5 not in frame["train_fraction"].tolist()  # the 50% run is the ablation's
    # the two-level interval: resample test rows (shared), then runs, as bootstrap.py documents
    rows = resamples()
    per_run = [classification_reference(tracked["labels"], tracked["probs"][f"bio-lora-{t}"], rows)["test_auc"]
               for t in (0, 1)]
    picks = np.random.default_rng([SEED, 2]).integers(0, 2, size=(B, 2))
    two_level = np.array([np.mean([per_run[k][b] for k in picks[b]]) for b in range(B)])
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx(interval(two_level), abs=1e-12)


def test_paired_comparisons_and_gaps_equal_an_independent_paired_bootstrap(tracked):
    ids, rows = tracked["ids"], resamples()
    ref = {k: classification_reference(tracked["labels"], tracked["probs"][k], rows)["test_auc"] for k in ("bio-zs", "clip-zs")}
    d = ref["bio-zs"] - ref["clip-zs"]
    p = min(1.0, 2 * min((1 + (d <= 0).sum()) / (B + 1), (1 + (d >= 0).sum()) / (B + 1)))
    logged = {k: tracked["client"].get_run(ids[k]).data.metrics["test_auc"] for k in ("bio-zs", "clip-zs")}
    gaps = table(tracked, "gaps")
    gap = gaps[(gaps["a_model"] == "biomedclip") & (gaps["a_strategy"] == "zeroshot") & (gaps["b_model"] == "clip-vit-b32")
               & (gaps["b_strategy"] == "zeroshot")].iloc[0]
    assert gap["difference"] == pytest.approx(logged["bio-zs"] - logged["clip-zs"], abs=1e-15)
    assert (gap["ci_low"], gap["ci_high"]) == pytest.approx(interval(d), abs=1e-12)
    assert gap["p_value"] == pytest.approx(p) and gap["medical_in_domain"] == "ID"
    quilt = gaps[gaps["a_model"] == "quiltnet"]
    assert set(quilt["medical_in_domain"]) == {"OOD"}  # a pathology model on breast ultrasound
    comparisons = table(tracked, "comparisons")
    pair = comparisons[(comparisons["a_model"] == "biomedclip") & (comparisons["b_model"] == "clip-vit-b32")
                       & (comparisons["a_strategy"] == "zeroshot") & (comparisons["b_strategy"] == "zeroshot")]
    assert pair[["difference", "ci_low", "ci_high", "p_value"]].to_numpy().tolist() == \
        gap[["difference", "ci_low", "ci_high", "p_value"]].to_numpy()[None].tolist()


def test_vqa_intervals_recompute_accuracy_overall_open_and_closed(tracked):
    frame = table(tracked, "finetune_vqa_vqa_rad_acc")
    closed = tracked["test"]["closed"].to_numpy()
    rows = np.random.default_rng(SEED).integers(0, 40, size=(B, 40))
    assert all(closed[r].any() and (~closed[r]).any() for r in rows)
    for key, model in (("clip", "clip-vit-b32"), ("bio", "biomedclip")):
        correct = tracked["correct"][key].astype(float)
        cell = frame[frame["model"] == model].iloc[0]
        assert cell["value"] == pytest.approx(correct.mean(), abs=1e-12)
        assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(interval(correct[rows].mean(axis=1)), abs=1e-12)
    for subset, mask in (("open", ~closed), ("closed", closed)):
        part = table(tracked, f"finetune_vqa_vqa_rad_acc_{subset}")
        correct = tracked["correct"]["bio"].astype(float)
        reference = np.array([correct[r][mask[r]].mean() for r in rows])
        cell = part[part["model"] == "biomedclip"].iloc[0]
        assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(interval(reference), abs=1e-12)


def test_retrieval_numbers_carry_no_interval_and_say_why(tracked):
    frame = table(tracked, "zeroshot_retrieval").set_index("metric")
    assert frame.loc["test_image_to_text_R1", "value"] == 0.125 and np.isnan(frame.loc["test_image_to_text_R1", "ci_low"])
    assert frame.loc["test_image_to_text_R10", "value"] == 0.5
    markdown = (tracked["folder"] / "report.md").read_text()
    assert "| roco/radiology | clip-vit-b32 | general | OOD | 0.125 | 0.250 | 0.500 |" in markdown
    assert "No interval where retrieval runs log no per-query ranks" in markdown
    warnings = markdown.split("## Warnings")[1].split("## ")[0]  # the run's small-gallery tag, shown in the report
    assert f"({tracked['ids']['retrieval']}): the test gallery holds only 5 captions" in warnings


def test_stability_ablation_recommendation_and_missing_runs(tracked):
    client, ids = tracked["client"], tracked["ids"]
    stability = table(tracked, "stability")
    assert stability["n"].tolist() == [2] and stability["model"].tolist() == ["biomedclip"]
    ablation = table(tracked, "ablation").set_index("train_fraction")
    assert ablation.loc[0.5, "value"] == client.get_run(ids["quilt-lora-half"]).data.metrics["test_auc"]
    assert ablation.loc[1.0, "value"] == client.get_run(ids["quilt-lora"]).data.metrics["test_auc"]
    markdown = (tracked["folder"] / "report.md").read_text()
    assert "| classification | breastmnist | quiltnet | lora | AUC |" in markdown  # the ablation row: 50% and 100%
    recommendation = table(tracked, "recommendations").set_index("testset").loc["breastmnist"]
    comparisons = table(tracked, "comparisons")
    significant = recommendation["difference_ci_low"] > 0 or recommendation["difference_ci_high"] < 0
    assert recommendation["verdict"] == ("significantly better" if significant else "not significantly different")
    best = comparisons["a_value"].combine(comparisons["b_value"], max).max()
    assert recommendation["best_value"] == best
    missing = markdown.split("## Missing")[1]
    assert f"({ids['failed']}): FAILED" in missing
    assert f"study 'stab' (parent run {tracked['parent']}): 2 of 3 planned runs finished" in missing
    assert "clip-vit-b32 · full" not in missing.split("Runs not finished")[0]  # a failed run is not a grid column


def test_runs_are_selected_by_study_spec_parent_tags_and_filter(tracked, tmp_path):
    client, ids = tracked["client"], tracked["ids"]

    def picked(**values) -> set[str]:
        return {r.run_id for r in select_runs(client, report_config({"experiment": EXPERIMENT, **values})).runs}

    stability = {ids["bio-lora-0"], ids["bio-lora-1"]}
    spec = tmp_path / "stability.yaml"
    spec.write_text("kind: stability\nname: stab\ndefaults: {model: biomedclip, dataset: breastmnist}\n")
    assert picked(study="stab") == picked(parent_run=tracked["parent"]) == picked(spec=str(spec)) == stability
    assert picked(tags="medvlm.model=quiltnet") == {ids["quilt-lora"], ids["quilt-lora-half"]}
    assert picked(tags="medvlm.task=vqa,medvlm.model=biomedclip") == {ids["vqa-bio"]}
    assert picked(filter="params.train_fraction = '0.5'") == {ids["quilt-lora-half"]}
    with pytest.raises(ConfigError, match="no MLflow experiment named 'nope'"):
        picked(experiment="nope")
    with pytest.raises(ConfigError, match="invalid filter"):
        picked(filter="params.train_fraction ~ 1")


def test_a_selection_without_runs_is_a_one_line_error(tracked, capsys):
    assert main(["report", "--experiment", EXPERIMENT, "--study", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medvlm: error: no finished medvlm runs match") and "\n" not in err
