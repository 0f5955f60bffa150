"""Publication-grade figures, checked on the matplotlib objects: AUC and its interval in the ROC legend,
whole class and model names in the tick labels, integer ticks, 200 dpi, SVG on request and a report
page with its figures embedded."""

from __future__ import annotations

import io
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.metrics import roc_auc_score

from medvlm.metrics.classification import classification_metrics
from medvlm.report.plots import ablation_curve, gap_heatmaps
from medvlm.report.render import Report, Section, write
from medvlm.report.tables import Table
from medvlm.studies.ablation import fraction_figure
from medvlm.studies.stability import std_figure
from medvlm.studies.summary import box_figure
from medvlm.tracking.figures import DPI, wrap
from medvlm.tracking.plots import MeanAuc, confusion_figure, learning_curves_figure, recall_figure, roc_figure
from tests.conftest import BREAST_ROOT, needs_breastmnist
from tests.report_fixtures import binary_probs

TITLE = "tiny-clip · breastmnist · lora"
LONG_MODELS = ["local-dir:/data/models/experiments/2026/biomedclip-finetuned-on-chest-xrays",
               "local-dir:/data/models/experiments/2026/biomedclip-finetuned-on-skin-lesions"]
ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
          "lung-right", "pancreas", "spleen"]


def squeezed(text: str) -> str:
    """Text without whitespace: a wrapped name turns spaces into line breaks and keeps every other character."""
    return re.sub(r"\s+", "", text)


def tick_texts(axis) -> list[str]:
    axis.axes.figure.draw_without_rendering()
    return [squeezed(label.get_text()) for label in axis.get_ticklabels()]


def legend_of(ax):
    """The axes' legend, or the figure's (beside the axes when there are many entries)."""
    return ax.get_legend() or ax.figure.legends[0]


def legend_texts(ax) -> list[str]:
    return [text.get_text() for text in legend_of(ax).get_texts()]


def pixels(fig) -> tuple[int, int]:
    """The PNG the figure saves to, as (width, height) in pixels."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return Image.open(io.BytesIO(buffer.getvalue())).size


def binary_case(n: int = 120):
    labels = np.repeat([0, 1], n // 2)
    return labels, binary_probs(labels, 1.2, seed=0)


def test_wrap_keeps_every_character_and_bounds_the_line_length():
    for name in [*LONG_MODELS, "Pleural Effusion", "x" * 60, "a b", "short"]:
        wrapped = wrap(name, 22)
        assert squeezed(wrapped) == squeezed(name)
        assert max(len(line) for line in wrapped.splitlines()) <= 22
    assert wrap("short") == "short"


def test_binary_roc_names_the_positive_class_and_gives_the_auc_with_its_interval():
    labels, probs = binary_case()
    fig = roc_figure(labels, probs, "binary", ["malignant", "normal, benign"], TITLE)
    ax = fig.axes[0]
    (curve, chance) = legend_texts(ax)
    auc = roc_auc_score(labels, probs[:, 1])
    assert "positive class: normal, benign" in curve
    match = re.search(r"AUC (\d\.\d{3}), 95% CI (\d\.\d{3})–(\d\.\d{3})", curve)
    assert match, curve
    value, low, high = map(float, match.groups())
    assert value == round(auc, 3) and low < value < high
    assert "chance" in chance
    assert TITLE in ax.get_title() and "ROC" in ax.get_title()


def test_the_interval_statistic_is_the_auc_ties_included():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    score = np.round(rng.random(300) * 0.5 + 0.3 * labels, 1)  # many ties
    rows = rng.integers(0, 300, 300)
    assert MeanAuc(((labels == 1, score),))(rows)["auc"] == pytest.approx(roc_auc_score(labels[rows], score[rows]))


def test_multiclass_roc_has_one_vs_rest_curves_with_their_aucs_and_the_mean_heading_the_legend():
    rng = np.random.default_rng(0)
    labels = np.arange(330) % len(ORGANS)
    logits = rng.normal(size=(330, len(ORGANS))) + 2.0 * np.eye(len(ORGANS))[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fig = roc_figure(labels, probs, "multiclass", ORGANS, TITLE)
    ax = fig.axes[0]
    texts = legend_texts(ax)
    for i, organ in enumerate(ORGANS):
        assert f"{organ} (AUC {roc_auc_score(labels == i, probs[:, i]):.3f})" in texts
    heading = legend_of(ax).get_title().get_text().replace("\n", " ")
    assert f"mean one-vs-rest AUC {classification_metrics(labels, probs, 'multiclass')['auc']:.3f}" in heading
    assert "95% CI" in heading


def test_confusion_matrix_shows_whole_names_counts_row_percentages_and_a_colour_bar():
    names = ["malignant tumour of the left breast", "normal, benign"]
    y_true = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 1, 1, 1, 0])
    fig = confusion_figure(y_true, y_pred, names, TITLE)
    ax, colorbar = fig.axes
    assert tick_texts(ax.xaxis) == tick_texts(ax.yaxis) == [squeezed(n) for n in names]
    cells = [t.get_text() for t in ax.texts]
    assert cells == ["2\n66.7%", "1\n33.3%", "1\n20.0%", "4\n80.0%"]
    assert "% of the true class" in colorbar.get_ylabel()
    assert TITLE in ax.get_title()


@pytest.mark.parametrize(("classes", "annotated"), [(11, "count and %"), (24, "count"), (40, None)])
def test_confusion_matrix_grows_with_the_class_count_and_thins_its_annotations(classes, annotated):
    names = (ORGANS * 4)[:classes]
    names = [f"{name} region {i}" for i, name in enumerate(names)]
    rng = np.random.default_rng(0)
    y_true = np.arange(classes * 5) % classes
    y_pred = np.where(rng.random(len(y_true)) < 0.6, y_true, rng.integers(0, classes, len(y_true)))
    fig = confusion_figure(y_true, y_pred, names, TITLE)
    ax = fig.axes[0]
    assert tick_texts(ax.yaxis) == [squeezed(n) for n in names]
    width, height = fig.get_size_inches()
    assert height >= 0.35 * classes and width > height  # a cell of at least a third of an inch; the colour bar beside
    texts = [t.get_text() for t in ax.texts]
    if annotated is None:
        assert texts == []
    else:
        assert len(texts) == classes ** 2
        assert all(("%" in t) == (annotated == "count and %") for t in texts)


def test_learning_curves_have_integer_epochs_a_best_epoch_marker_and_a_validation_metric_panel():
    history = [{"train_loss": 1 / e, "val_loss": abs(e - 3) + 0.5, "val_auc": 0.5 + 0.04 * e} for e in range(1, 8)]
    fig = learning_curves_figure(history, 2, "val_auc", TITLE)
    losses, metric = fig.axes
    for ax in (losses, metric):
        ticks = [float(t.replace("−", "-")) for t in tick_texts(ax.xaxis) if t]
        assert ticks and all(t == int(t) for t in ticks)
        marker = [line for line in ax.lines if "best epoch 3" in str(line.get_label())]
        assert marker and list(marker[0].get_xdata()) == [3, 3]
    assert metric.get_ylabel() == "val_auc" and losses.get_ylabel() == "loss"
    assert {t for t in legend_texts(losses)} >= {"train_loss", "val_loss"}
    assert TITLE in fig.get_suptitle()


def test_learning_curves_with_a_loss_selection_metric_are_one_panel():
    history = [{"train_loss": 1.0, "val_loss": 0.9}, {"train_loss": 0.8, "val_loss": 0.7}]
    assert len(learning_curves_figure(history, 1, "val_loss", TITLE).axes) == 1


def test_recall_at_k_ticks_are_the_integers_measured():
    ks = [1, 2, 3, 5, 10, 20, 37]
    curve = pd.DataFrame([{"direction": d, "k": k, "recall": min(1.0, k / 37)} for d in ("image_to_text", "text_to_image")
                          for k in ks])
    fig = recall_figure(curve, TITLE)
    ax = fig.axes[0]
    assert tick_texts(ax.xaxis) == [str(k) for k in ks]
    assert not [t for t in tick_texts(ax.xaxis) if "^" in t or "times" in t]
    assert legend_texts(ax) == ["image → text", "text → image"]


def test_study_and_report_plots_show_whole_model_names():
    std_rows = pd.DataFrame([{"dataset": "vqa_rad", "model": m, "strategy": s, "metric": "test_acc", "std": 0.01 * (i + 1)}
                             for i, (m, s) in enumerate([(m, s) for m in LONG_MODELS for s in ("full", "lora")])])
    ax = std_figure(std_rows, "test_acc").axes[0]
    assert tick_texts(ax.xaxis) == [squeezed(m) for m in LONG_MODELS]
    children = pd.DataFrame([{"dataset": "vqa_rad", "group": f"{m} · vqa_rad · lora", "test_acc": 0.5 + 0.01 * i}
                             for i, m in enumerate(LONG_MODELS * 3)])
    ax = box_figure(children, "test_acc").axes[0]
    assert tick_texts(ax.xaxis) == [squeezed(f"{m} · lora") for m in LONG_MODELS]
    fractions = pd.DataFrame([{"dataset": "organamnist", "model": m, "strategy": "lora", "metric": "test_auc",
                               "train_fraction": f, "mean": 0.8 + f / 10, "std": 0.01}
                              for m in LONG_MODELS for f in (0.05, 0.1, 0.25, 1.0)])
    ax = fraction_figure(fractions, "test_auc").axes[0]
    assert [squeezed(t) for t in legend_texts(ax)] == [squeezed(f"{m} · lora") for m in LONG_MODELS]
    assert tick_texts(ax.xaxis) == ["5%", "10%", "25%", "100%"]
    curve = fractions.rename(columns={"dataset": "testset", "mean": "value"}).assign(variant="", ci_low=np.nan,
                                                                                   ci_high=np.nan)
    ax = ablation_curve(curve).axes[0]
    assert [squeezed(t) for t in legend_texts(ax)] == [squeezed(f"{m} · lora") for m in LONG_MODELS]
    gaps = pd.DataFrame([{"task": "classification", "a_strategy": "lora", "b_strategy": "lora", "a_model": LONG_MODELS[0],
                          "b_model": "clip-vit-b32", "testset": "breastmnist", "difference": 0.05, "significant": True,
                          "medical_in_domain": "ID", "metric": "test_auc"}])
    (heatmap,) = gap_heatmaps(gaps, "png").values()
    assert tick_texts(heatmap.axes[0].yaxis) == [squeezed(f"{LONG_MODELS[0]} − clip-vit-b32")]


def test_every_figure_is_drawn_at_200_dpi_or_more():
    labels, probs = binary_case()
    history = [{"train_loss": 1.0, "val_loss": 0.9, "val_auc": 0.6}, {"train_loss": 0.8, "val_loss": 0.7, "val_auc": 0.7}]
    curve = pd.DataFrame({"direction": ["image_to_text"] * 2, "k": [1, 5], "recall": [0.2, 0.6]})
    figures = [roc_figure(labels, probs, "binary", ["a", "b"], TITLE),
               confusion_figure(labels, (probs[:, 1] > 0.5).astype(int), ["a", "b"], TITLE),
               learning_curves_figure(history, 1, "val_auc", TITLE), recall_figure(curve, TITLE)]
    for fig in figures:
        assert fig.dpi >= 200 and DPI >= 200
        width, height = fig.get_size_inches()
        assert pixels(fig) == (round(width * fig.dpi), round(height * fig.dpi))


def test_report_html_embeds_png_and_svg_figures_and_the_markdown_shows_them_as_images(tmp_path):
    labels, probs = binary_case()
    view = pd.DataFrame({"model": ["a <b>", "c_d"], "auc": ["**0.9**", "_0.8_"]})
    figures = {"plots/roc.png": roc_figure(labels, probs, "binary", ["a", "b"], TITLE),
               "plots/recall.svg": recall_figure(pd.DataFrame({"direction": ["image_to_text"] * 2, "k": [1, 5],
                                                               "recall": [0.2, 0.6]}), TITLE)}
    report = Report("medvlm report", ["Runs: **2** finished", "", "- first", "- second"],
                    [Section("Zero-shot", [Table("zs", "Zero-shot", view, view)], list(figures))], figures)
    markdown = write(report, tmp_path)
    assert "![roc](plots/roc.png)" in markdown and "![recall](plots/recall.svg)" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1
    assert page.count("<svg") == 1 and "<?xml" not in page
    assert "<td>a &lt;b&gt;</td>" in page and "<b>2</b>" in page and "<li>first</li>" in page
    assert "<td><b>0.9</b></td>" in page and "<td><i>0.8</i></td>" in page  # best bold, second italic, as in markdown
    assert "<td>c_d</td>" in page
    width = round(figures["plots/roc.png"].get_size_inches()[0] * 96)
    assert f'width="{width}"' in page  # shown at its size in inches, not at 200 dpi's pixel count
    assert (tmp_path / "plots" / "recall.svg").read_text().lstrip().startswith("<?xml")
    with Image.open(tmp_path / "plots" / "roc.png") as png:
        assert round(png.info["dpi"][0]) >= 200


@needs_breastmnist
def test_a_run_with_figure_format_svg_logs_svg_plots(workdir, tiny_model_dir):
    from medvlm.cli import main

    assert main(["finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT), "--strategy", "linear", "--epochs", "2", "--figure_format", "svg"]) == 0
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    plots = sorted(a.path for a in client.list_artifacts(run.info.run_id, "plots"))
    assert plots == ["plots/confusion_matrix.svg", "plots/learning_curves.svg", "plots/roc.svg"]
    roc = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots/roc.svg", dst_path=str(workdir))
    with open(roc) as file:
        svg = file.read()
    assert "<svg" in svg and "positive class:" in svg and "AUC" in svg  # text kept as text
