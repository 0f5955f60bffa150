"""Classification metrics against MedMNIST's official evaluator and direct scikit-learn calls."""

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from medvlm.errors import DataError
from medvlm.metrics.classification import classification_metrics, probabilities

MEDMNIST_TASK = {"binary": "binary-class", "multiclass": "multi-class", "multilabel": "multi-label, binary-class"}


def _softmax(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return probabilities(rng.normal(size=(n, c)) * 2, "multiclass")


def _cases():
    """(kind, y_true, probs) for random and edge-case inputs."""
    rng = np.random.default_rng(0)
    for n in (7, 200):
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        yield "binary", y, _softmax(rng, n, 2)
    y = np.repeat([0, 1], 10)
    yield "binary", y, np.stack([1 - y, y], axis=1).astype(float)  # perfect classifier
    yield "binary", y, np.full((20, 2), 0.5)  # constant scores: AUC 0.5, everything predicted 0
    for n in (30, 300):
        y = rng.integers(0, 11, n)
        y[:11] = np.arange(11)
        yield "multiclass", y, _softmax(rng, n, 11)
    y = np.arange(33) % 11
    yield "multiclass", y, np.full((33, 11), 1 / 11)  # all-tie argmax -> class 0 (numpy's first max)
    for n in (20, 250):
        y = rng.integers(0, 2, (n, 14))
        y[0], y[1] = 0, 1
        yield "multilabel", y, probabilities(rng.normal(size=(n, 14)), "multilabel")
    y = np.zeros((10, 14), dtype=int)
    y[::2] = 1
    yield "multilabel", y, np.where(y == 1, 0.5, 0.2)  # positives exactly at the threshold


@pytest.mark.parametrize("kind, y_true, probs", list(_cases()))
def test_matches_medmnist_and_sklearn(kind, y_true, probs):
    ours = classification_metrics(y_true, probs, kind)
    task = MEDMNIST_TASK[kind]
    assert ours["auc"] == pytest.approx(getAUC(y_true, probs, task), abs=1e-12, rel=0)
    assert ours["acc"] == pytest.approx(getACC(y_true, probs, task), abs=1e-12, rel=0)

    if kind == "multiclass":
        pred = probs.argmax(axis=1)
        f1 = f1_score(y_true, pred, average="macro")
        balanced = balanced_accuracy_score(y_true, pred)
    elif kind == "binary":
        pred = (probs[:, 1] > 0.5).astype(int)
        f1 = f1_score(y_true, pred)
        balanced = balanced_accuracy_score(y_true, pred)
    else:
        pred = (probs > 0.5).astype(int)
        f1 = f1_score(y_true, pred, average="macro")
        balanced = np.mean([balanced_accuracy_score(y_true[:, i], pred[:, i]) for i in range(14)])
    assert ours["f1"] == pytest.approx(f1, abs=1e-12, rel=0)
    assert ours["f1_weighted"] == pytest.approx(f1_score(y_true, pred, average="weighted"), abs=1e-12, rel=0)
    assert ours["balanced_acc"] == pytest.approx(balanced, abs=1e-12, rel=0)
    assert all(isinstance(v, float) for v in ours.values())


def test_binary_score_exactly_at_threshold_is_negative():
    """MedMNIST predicts positive only for score > 0.5; a score of exactly 0.5 is class 0."""
    y = np.array([1, 1, 0, 0])
    probs = np.array([[0.5, 0.5], [0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    ours = classification_metrics(y, probs, "binary")
    assert ours["acc"] == 0.75 == getACC(y, probs, "binary-class")
    assert ours["f1"] == pytest.approx(2 / 3)  # tp=1, fn=1, fp=0
    assert ours["balanced_acc"] == 0.75


def test_multilabel_score_exactly_at_threshold_is_negative():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = np.array([[0.5, 0.1], [0.1, 0.9], [0.7, 0.5], [0.2, 0.3]])
    ours = classification_metrics(y, probs, "multilabel")
    assert ours["acc"] == 0.75 == getACC(y, probs, "multi-label, binary-class")


def test_auc_uses_probabilities_not_hard_labels():
    """All scores sit on the same side of 0.5 (acc 0.5), but they rank perfectly: AUC 1."""
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    ours = classification_metrics(y, probs, "binary")
    assert ours["auc"] == 1.0
    assert ours["acc"] == 0.5


def test_multilabel_ignored_entries_are_left_out_per_label():
    """-1 entries: each label is MedMNIST's binary-class metric on its own masked-in rows."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (120, 14))
    y[0], y[1] = 0, 1
    y[2:][rng.random((118, 14)) < 0.3] = -1
    probs = probabilities(rng.normal(size=(120, 14)), "multilabel")
    ours = classification_metrics(y, probs, "multilabel")

    per_label = []
    for i in range(14):
        keep = y[:, i] >= 0
        yi, pi = y[keep, i], probs[keep, i]
        pred = (pi > 0.5).astype(int)
        per_label.append(
            (getAUC(yi, pi, "binary-class"), getACC(yi, pi, "binary-class"), f1_score(yi, pred),
             balanced_accuracy_score(yi, pred), yi.sum())
        )
    auc, acc, f1, balanced, positives = map(np.array, zip(*per_label))
    assert ours["auc"] == pytest.approx(auc.mean(), abs=1e-12, rel=0)
    assert ours["acc"] == pytest.approx(acc.mean(), abs=1e-12, rel=0)
    assert ours["f1"] == pytest.approx(f1.mean(), abs=1e-12, rel=0)
    assert ours["f1_weighted"] == pytest.approx((f1 * positives).sum() / positives.sum(), abs=1e-12, rel=0)
    assert ours["balanced_acc"] == pytest.approx(balanced.mean(), abs=1e-12, rel=0)
    assert ours["auc"] != pytest.approx(getAUC(np.maximum(y, 0), probs, "multi-label, binary-class"))


def test_multilabel_label_single_class_after_masking_raises():
    y = np.array([[0, -1], [1, 1], [0, 1]])
    with pytest.raises(DataError, match=r"label 1 has a single class in the evaluated labels \(2 samples\)"):
        classification_metrics(y, np.full((3, 2), 0.4), "multilabel")


@pytest.mark.parametrize(
    "kind, y_true, probs, what",
    [
        ("binary", np.ones(5, dtype=int), np.full((5, 2), 0.5), "the binary label"),
        ("multiclass", np.array([0, 1, 0, 1]), np.full((4, 3), 1 / 3), "class 2"),
        ("multilabel", np.array([[0, 1], [1, 1], [0, 1]]), np.full((3, 2), 0.4), "label 1"),
    ],
)
def test_single_class_auc_raises_data_error(kind, y_true, probs, what):
    """MedMNIST returns NaN here (sklearn warns); we refuse to log a NaN test AUC."""
    with pytest.warns(Warning):
        assert np.isnan(getAUC(y_true, probs, MEDMNIST_TASK[kind]))
    with pytest.raises(DataError, match=f"AUC undefined: {what} has a single class"):
        classification_metrics(y_true, probs, kind)


@pytest.mark.parametrize(
    "kind, y_true, probs, message",
    [
        ("binary", np.array([0, 1, 1]), np.full((4, 2), 0.5), r"shape \(4,\)"),
        ("binary", np.array([[0], [1]]), np.full((2, 2), 0.5), r"shape \(2,\)"),
        ("binary", np.array([0, 1]), np.full((2, 3), 0.3), "2 columns"),
        ("binary", np.array([0, 2]), np.full((2, 2), 0.5), r"in \{0, 1\}"),
        ("multiclass", np.array([0, 3]), np.full((2, 3), 0.3), r"in 0\.\.2"),
        ("multilabel", np.array([0, 1]), np.full((2, 3), 0.3), "shape of probs"),
        ("multilabel", np.array([[0, 2], [1, 1]]), np.full((2, 2), 0.3), r"in \{-1 \(ignored\), 0, 1\}"),
        ("binary", np.array([0, -1]), np.full((2, 2), 0.5), r"in \{0, 1\}"),
        ("multilabel", np.array([[0, 1], [1, 1]]), np.array([[0.1, np.nan], [0.2, 0.3]]), "NaN"),
        ("multiclass", np.array([0]), np.full(3, 0.3), r"\(N, C\)"),
        ("regression", np.array([0, 1]), np.full((2, 2), 0.5), "kind must be"),
    ],
)
def test_invalid_inputs_raise_value_error(kind, y_true, probs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, probs, kind)


def test_probabilities_softmax_and_sigmoid():
    logits = torch.tensor([[0.0, 1.0, -2.0], [3.0, 3.0, 3.0]])
    soft = probabilities(logits, "multiclass")
    assert isinstance(soft, np.ndarray)
    np.testing.assert_allclose(soft, torch.softmax(logits.double(), dim=1).numpy(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probabilities(logits.numpy(), "binary"), probabilities(logits, "binary"))
    sig = probabilities(logits, "multilabel")
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-logits.double().numpy())), rtol=1e-15)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        probabilities(torch.zeros(3), "binary")


def test_auc_hard_is_the_auc_of_hard_predictions_by_hand():
    """Binary: y = 0 0 1 1, predicted 0 1 1 1 (scores thresholded at 0.5): TPR 1, FPR 1/2, so the ROC of the
    hard labels is (0,0) (1/2,1) (1,1) with area 3/4; the score AUC of the same probabilities is 1."""
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    got = classification_metrics(y, probs, "binary")
    assert got["auc_hard"] == 0.75 and got["auc"] == 1.0
    # multi-class, one-vs-rest on one-hot predictions: predictions 0 1 1 2 for truths 0 1 2 2
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 2]] * 0.8 + 0.2 / 3
    per_class = [(1 + 1) / 2, (1 + 2 / 3) / 2, (1 / 2 + 1) / 2]  # (TPR + TNR) / 2 of class 0, 1, 2
    assert classification_metrics(y, probs, "multiclass")["auc_hard"] == pytest.approx(np.mean(per_class), abs=1e-12)
    # and scikit-learn's AUC of the one-hot predictions, the paper code's computation
    onehot = np.eye(3)[[0, 1, 1, 2]]
    assert np.mean(per_class) == pytest.approx(roc_auc_score(np.eye(3)[y], onehot, average="macro"), abs=1e-12)


@pytest.mark.parametrize("kind, y_true, probs", [
    ("binary", np.array([0, 1, 1, 0, 1]), np.array([[0.3, 0.7], [0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.45, 0.55]])),
    ("multiclass", np.array([0, 1, 2, 2, 1, 0]), np.tile([[0.2, 0.5, 0.3]], (6, 1))),
    ("multilabel", np.array([[0, 1], [1, 0], [1, 1]]), np.full((3, 2), 0.7)),
])
def test_auc_hard_is_one_half_for_a_constant_predictor(kind, y_true, probs):
    """The paper's Table 1 shows exactly 50.0 for models that predict one class; `auc` from scores does not."""
    assert classification_metrics(y_true, probs, kind)["auc_hard"] == 0.5


def test_validation_mode_logs_nan_aucs_with_a_warning_and_keeps_the_rest():
    y = np.array([0, 0, 2, 2])
    probs = _softmax(np.random.default_rng(1), 4, 3)
    with pytest.warns(UserWarning, match=r"class 1 has a single class .*auc and auc_hard are NaN"):
        got = classification_metrics(y, probs, "multiclass", undefined="nan")
    assert np.isnan(got["auc"]) and np.isnan(got["auc_hard"])
    assert got["acc"] == pytest.approx(np.mean(probs.argmax(1) == y)) and np.isfinite(got["f1"])
    with pytest.raises(DataError, match="class 1 has a single class"):
        classification_metrics(y, probs, "multiclass")
