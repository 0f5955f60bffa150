"""Generated-answer metrics against values computed by hand on written examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medvlm.metrics.generative_vqa import closed_correct, generative_metrics, normalize, open_scores, yes_no


def test_normalisation_drops_case_punctuation_and_articles():
    assert normalize("The Left Kidney.") == "left kidney"
    assert normalize("An X-ray of a 1.5 cm mass") == "x ray of 1.5 cm mass"


@pytest.mark.parametrize("text, said", [
    ("Yes, there is a fracture.", "yes"), ("no", "no"), ("There is no fracture", "no"),
    ("I think yes", "yes"), ("yes and no", "yes"), ("maybe yes, maybe no", None), ("The liver", None), ("", None),
])
def test_closed_yes_no_rule(text, said):
    assert yes_no(text) == said


def test_closed_correctness_and_unparsed():
    assert closed_correct("Yes", "Yes, clearly.") == (True, True)
    assert closed_correct("no", "There is a mass") == (False, False)  # neither: wrong and counted
    assert closed_correct("left", "It is on the left side") == (True, True)  # non yes/no closed: whole words
    assert closed_correct("left", "leftward") == (False, True)


def test_open_scores_by_hand():
    # reference "left upper lobe" (3 tokens), prediction "the upper lobe of lung" -> "upper lobe of lung" (4 tokens)
    s = open_scores("left upper lobe", "the upper lobe of lung")
    assert s["exact"] == 0 and s["recall"] == pytest.approx(2 / 3)
    precision = 2 / 4
    assert s["f1"] == pytest.approx(2 * precision * (2 / 3) / (precision + 2 / 3))
    assert s["bleu1"] == pytest.approx(2 / 4)  # c=4 >= r=3: no brevity penalty
    short = open_scores("right middle lobe", "lobe")  # c=1 < r=3: BP = exp(1 - 3)
    assert short["recall"] == pytest.approx(1 / 3) and short["bleu1"] == pytest.approx(math.exp(-2))
    repeated = open_scores("mass", "mass mass mass")  # clipped counts
    assert repeated["recall"] == 1 and repeated["bleu1"] == pytest.approx(1 / 3)
    assert open_scores("Brain", "the brain.") == {"exact": 1.0, "recall": 1.0, "f1": 1.0, "bleu1": 1.0}
    assert open_scores("brain", "")["recall"] == 0


def test_generative_metrics_summary_breakdown_and_taxonomy():
    answers = ["yes", "no", "left", "kidneys", "heart", "right side"]
    predictions = ["Yes.", "It is unclear", "left", "left kidney", "yes", "right side"]
    closed = np.array([True, True, True, False, False, False])
    groups = pd.DataFrame({"question_type": ["PRES", "PRES", "POS", "ORGAN", "ORGAN", "POS"]})
    metrics, rows, table = generative_metrics(answers, predictions, closed, groups)
    assert metrics["closed_acc"] == pytest.approx(2 / 3) and metrics["closed_unparsed"] == 1
    assert metrics["open_exact"] == pytest.approx(1 / 3)
    assert metrics["open_recall"] == pytest.approx((0 + 0 + 1) / 3)  # "kidneys" vs "left kidney": no shared token
    assert metrics["acc"] == pytest.approx(3 / 6)
    assert metrics["err_wrong_granularity"] == 1 and metrics["err_inappropriate_type"] == 2
    assert metrics["closed_acc_question_type_pres"] == pytest.approx(1 / 2)
    assert metrics["open_recall_question_type_organ"] == 0 and metrics["open_recall_question_type_pos"] == 1
    assert list(rows["tag"]) == ["", "inappropriate-type", "", "wrong-granularity", "inappropriate-type", ""]
    assert set(table["value"]) == {"PRES", "POS", "ORGAN"}


@pytest.mark.parametrize("reply, score", [("85", 85.0), ("Score: 72/100", 72.0), ("0 then 101 then 40", 40.0),
                                          ("excellent", None), ("", None)])
def test_judge_reads_the_first_score_in_range(reply, score):
    from medvlm.metrics.judge import parse_score

    assert parse_score(reply) == score


def test_local_judge_scores_every_open_answer_or_counts_it(tmp_path):
    """A tiny Llama chat model as judge: every open row is either scored or counted as unparsed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from medvlm.metrics.judge import judge_open_answers
    from tests.llava_tiny import VQA_RAD, train_tokenizer

    if not VQA_RAD.is_dir():
        pytest.skip(f"real VQA-RAD not found at {VQA_RAD}: it trains the tiny tokenizer")
    tokenizer = train_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=512)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    test = pd.DataFrame({"question": ["What organ?", "Is it?", "Where?"], "answer": ["lung", "yes", "left"],
                         "closed": [False, True, False]})
    out = judge_open_answers(str(tmp_path), test, ["lung", "yes", "right"], batch_size=2)
    assert set(out) == {"judge_score", "judge_unparsed"}
    assert out["judge_unparsed"] == 2 or 1 <= out["judge_score"] <= 100
