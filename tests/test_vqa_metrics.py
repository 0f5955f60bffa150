"""VQA metrics against hand-computed values and scikit-learn, and the error taxonomy on hand-written examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from medvlm.metrics.vqa import breakdown, breakdown_metrics, vqa_metrics
from medvlm.metrics.vqa_taxonomy import TAGS, content_words, error_tag, singular, taxonomy_counts

# vocabulary: 0 unknown, 1 yes, 2 no, 3 liver, 4 lung
Y_TRUE = np.array([1, 2, 1, 3, 4, 0, 3, 0])
Y_PRED = np.array([1, 1, 1, 3, 3, 3, 4, 0])
CLOSED = np.array([True, True, True, False, False, False, False, False])


def test_accuracy_overall_open_closed_by_hand():
    m = vqa_metrics(Y_TRUE, Y_PRED, CLOSED)
    assert m["acc"] == pytest.approx(4 / 8)
    assert m["acc_closed"] == pytest.approx(2 / 3)
    assert m["acc_open"] == pytest.approx(2 / 5)
    assert m["oov"] == 2


def test_weighted_f1_by_hand_and_against_sklearn():
    m = vqa_metrics(Y_TRUE, Y_PRED, CLOSED)
    # closed: yes (support 2): P 2/3, R 1 -> F1 0.8; no (support 1): F1 0 -> weighted (2*0.8 + 0) / 3
    assert m["f1_weighted_closed"] == pytest.approx(1.6 / 3)
    for key, subset in (("f1_weighted", slice(None)), ("f1_weighted_closed", CLOSED), ("f1_weighted_open", ~CLOSED)):
        expected = f1_score(Y_TRUE[subset], Y_PRED[subset], average="weighted", zero_division=0)
        assert m[key] == pytest.approx(expected)


def test_unknown_answers_count_as_errors_unless_predicted_unknown():
    all_unknown = vqa_metrics(np.array([0, 0, 1]), np.array([2, 0, 1]), np.array([False, False, True]))
    assert all_unknown["oov"] == 2
    assert all_unknown["acc"] == pytest.approx(2 / 3)
    assert all_unknown["acc_open"] == pytest.approx(1 / 2)


def test_a_missing_subset_gets_no_metric_rather_than_nan():
    m = vqa_metrics(np.array([1, 2]), np.array([1, 1]), np.array([True, True]))
    assert "acc_open" not in m and "f1_weighted_open" not in m
    assert m["acc_closed"] == 0.5


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="equal-length"):
        vqa_metrics(np.array([1, 2]), np.array([1]), np.array([True, False]))


def test_breakdown_by_question_type():
    groups = pd.DataFrame({"question_type": ["PRES", "PRES", "PRES", "ORGAN", "ORGAN", "POS+PRES", "ORGAN", "ORGAN"],
                           "organ": ["CHEST"] * 4 + ["HEAD"] * 4})
    table = breakdown(Y_TRUE, Y_PRED, groups)
    row = table[(table["column"] == "question_type") & (table["value"] == "ORGAN")].iloc[0]
    assert row["n"] == 4 and row["acc"] == pytest.approx(2 / 4)
    assert set(table["column"]) == {"question_type", "organ"}
    metrics = breakdown_metrics(table)
    assert metrics == {"acc_question_type_organ": 0.5, "acc_question_type_pos_pres": 0.0,
                       "acc_question_type_pres": pytest.approx(2 / 3)}


@pytest.mark.parametrize(("answer", "prediction", "tag"), [
    # the paper's six examples (see the taxonomy module docstring for the reasoning)
    ("heterogeneous", "yes", "inappropriate-type"),
    ("kidneys", "left kidney", "wrong-granularity"),
    ("right side", "right lung", "wrong-granularity"),
    ("pancreas", "brain", "other"),
    ("right frontal lobe", "right temporal lobe", "other"),
    ("heart", "lung", "other"),
    # more hand-written cases for each tag
    ("left", "no", "inappropriate-type"),
    ("yes", "left lung", "inappropriate-type"),
    ("X-ray", "xray", "paraphrase"),
    ("the left kidneys", "Left kidney", "paraphrase"),
    ("kidney left", "left kidney", "paraphrase"),
    ("small bowel obstruction with air fluid levels", "small bowel obstruction with air fluid level seen", "paraphrase"),
    ("lung", "bilateral lungs", "wrong-granularity"),
    ("left upper lobe", "upper lobe", "wrong-granularity"),
    ("left region", "left kidney", "wrong-granularity"),
    ("yes", "no", "other"),
    ("ct", "mri", "other"),
])
def test_error_tags(answer, prediction, tag):
    assert error_tag(answer, prediction) == tag


def test_right_answers_get_no_tag_and_counts_cover_every_tag():
    assert error_tag("Yes", "yes.") is None
    counts = taxonomy_counts(["yes", "kidneys", "heart", "pancreas", "no"], ["heterogeneous", "left kidney", "lung", "brain", "no"])
    assert counts == {"inappropriate-type": 1, "wrong-granularity": 1, "paraphrase": 0, "other": 2}
    assert tuple(counts) == TAGS


def test_singular_and_content_words():
    assert [singular(w) for w in ("kidneys", "arteries", "masses", "pancreas", "fetus", "pelvis", "ribs")] == \
        ["kidney", "artery", "mass", "pancreas", "fetus", "pelvis", "rib"]
    assert content_words("The lesions in the left lobe") == ["lesion", "left", "lobe"]
