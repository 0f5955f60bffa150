"""The paper's qualitative VQA error analysis, made automatic: one tag per wrong prediction.

Tags, checked in this order:

- `inappropriate-type`: the prediction answers a different kind of question than the answer
  does: yes/no for a non-yes/no answer, or the reverse. The answer's own yes/no-ness is the
  reference, not the open/closed flag: closed VQA-RAD questions include "left or right?",
  and "yes" is as wrong a type there as for an open question.
- `paraphrase`: the same answer in other words: equal once spaces and punctuation are
  dropped ("x-ray" / "xray"), or the same content words up to order, plural and articles
  ("the left kidneys" / "left kidney").
- `wrong-granularity`: one phrase is a more specific version of the other. Each phrase is read
  as modifiers + head word (the last content word, singularised). The less specific side
  either has the same head and a proper subset of the modifiers ("kidneys" / "left kidney"),
  or a generic location head (side, region, area, ...) whose modifiers the other side has
  ("right side" / "right lung").
- `paraphrase` again for the remaining pairs with a token-overlap F1 >= 0.8: high overlap
  that is not a specificity difference ("upper lobe" / "left upper lobe" overlaps 0.8 but
  is granularity, checked first).
- `other`: anything else: wrong organ, wrong finding, a different structure at the same level
  of detail ("right frontal lobe" / "right temporal lobe": same head, but neither modifier set
  contains the other, so neither is more specific).

The paper's six examples (answer vs prediction) and why they get their tags:

=====================  ====================  ===================  =====================================
answer                 prediction            tag                  why
=====================  ====================  ===================  =====================================
heterogeneous          yes                   inappropriate-type   yes/no to a question about appearance
kidneys                left kidney           wrong-granularity    same head (kidney), one more modifier
right side             right lung            wrong-granularity    generic "side" made specific ("lung")
pancreas               brain                 other                a different organ
right frontal lobe     right temporal lobe   other                another lobe, equally specific
heart                  lung                  other                a different organ
=====================  ====================  ===================  =====================================

The paper lists the last three as anatomical confusions; the issue's taxonomy has no such
category, and none of them is a type, wording or specificity error, so they are `other`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal

from medvlm.data.vqa import YES_NO, normalize_answer

Tag = Literal["inappropriate-type", "wrong-granularity", "paraphrase", "other"]
TAGS: tuple[Tag, ...] = ("inappropriate-type", "wrong-granularity", "paraphrase", "other")
STOPWORDS = frozenset({"a", "an", "the", "of", "in", "on", "at", "to", "is", "are", "it", "its"})
GENERIC_HEADS = frozenset({"side", "region", "area", "part", "portion", "half", "aspect", "segment", "zone"})
PARAPHRASE_F1 = 0.8


def singular(word: str) -> str:
    """A plural noun's singular, for the plurals radiology answers use (kidneys, arteries, masses)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "as", "os")):
        return word[:-1]
    return word


def content_words(answer: str) -> list[str]:
    """Normalised, singularised words without articles and prepositions."""
    return [singular(w) for w in normalize_answer(answer).split() if w not in STOPWORDS]


def _overlap_f1(a: list[str], b: list[str]) -> float:
    common = sum((Counter(a) & Counter(b)).values())
    return 2 * common / (len(a) + len(b)) if a and b else 0.0


def _less_specific(general: list[str], specific: list[str]) -> bool:
    """Is `general` a strictly coarser version of `specific` (see the module docstring)?"""
    head_g, mods_g = general[-1], set(general[:-1])
    head_s, mods_s = specific[-1], set(specific[:-1])
    if head_g == head_s:
        return mods_g < mods_s
    return head_g in GENERIC_HEADS and mods_g <= mods_s | {head_s}


def error_tag(answer: str, prediction: str) -> Tag | None:
    """The tag of a wrong prediction; None when the prediction is right (equal once normalised)."""
    norm_a, norm_p = normalize_answer(answer), normalize_answer(prediction)
    if norm_a == norm_p:
        return None
    if (norm_a in YES_NO) != (norm_p in YES_NO):
        return "inappropriate-type"
    words_a, words_p = content_words(answer), content_words(prediction)
    if norm_a.replace(" ", "") == norm_p.replace(" ", "") or sorted(words_a) == sorted(words_p):
        return "paraphrase"
    if words_a and words_p and (_less_specific(words_a, words_p) or _less_specific(words_p, words_a)):
        return "wrong-granularity"
    return "paraphrase" if _overlap_f1(words_a, words_p) >= PARAPHRASE_F1 else "other"


def taxonomy_counts(answers: Iterable[str], predictions: Iterable[str]) -> dict[Tag, int]:
    """How many wrong predictions got each tag (every tag present, zeros included)."""
    counts = Counter(tag for tag in map(error_tag, answers, predictions) if tag is not None)
    return {tag: counts.get(tag, 0) for tag in TAGS}
