"""Every MLflow metric key a run logs is built here, so no module spells one by hand.

A key is `<group>_<name>`, and its group says which part of the run it measures:
- `train_…` per epoch and about the training (`train_loss`, `train_best_epoch`, `train_examples`);
- `val_…` per epoch on the validation split (`val_loss`, `val_auc`);
- `test_…` the final results on the test split (`test_auc`, `test_image_to_text_R1`);
- `cost_…` what the run cost (timings, throughput, prompt counts); the two cost keys every run has
  had since the first version, `trainable_params` and `train_images_per_s`, keep their names and
  belong to this group;
- `data_…` facts about the data that belong to no one split (the VQA answer vocabulary).

The separator is `_`, not MLflow's `/` chart-section separator, because the project's published
keys (README, "What a run records") are `train_loss`, `val_loss` and `test_<metric>`: the MLflow UI
sorts charts and columns by key, so each group still sits together. Per-epoch metrics are logged at
step = epoch number, counted from `FIRST_EPOCH` as the progress lines, the learning curves and
`train_best_epoch` count them.

This module imports nothing: the catalog and the CLI read it before torch or MLflow load.
"""

from __future__ import annotations

SEP = "_"
TRAIN, VAL, TEST, COST, DATA = "train", "val", "test", "cost", "data"
GROUPS = (TRAIN, VAL, TEST, COST, DATA)
FIRST_EPOCH = 1


def key(group: str, name: str) -> str:
    """`key("val", "auc")` -> `val_auc`; a data split's name is a group too (`train_images`)."""
    return f"{group}{SEP}{name}"


def train(name: str) -> str:
    return key(TRAIN, name)


def val(name: str) -> str:
    return key(VAL, name)


def test(name: str) -> str:
    return key(TEST, name)


def cost(name: str) -> str:
    return key(COST, name)


def data(name: str) -> str:
    return key(DATA, name)


def in_group(metric: str, group: str) -> bool:
    return group_of(metric) == group


def bare(metric: str) -> str:
    """The key without its group: `test_auc` -> `auc` (file names, table headers)."""
    group = group_of(metric)
    return metric.removeprefix(group + SEP) if group is not None and metric not in PUBLISHED_COST else metric


def examples(split: str) -> str:
    """The number of examples (rows, QA pairs) in a data split: `train_examples`."""
    return key(split, "examples")


def epoch_number(index: int) -> int:
    """The epoch number users see (progress line, metric step, plots) of the 0-based epoch `index`."""
    return index + FIRST_EPOCH


TRAIN_LOSS = train("loss")
VAL_LOSS = val("loss")
TRAIN_BEST_EPOCH = train("best_epoch")
TRAIN_EPOCHS_RUN = train("epochs_run")
TRAINABLE_PARAMS = "trainable_params"  # a published key, kept without its group
TRAIN_IMAGES_PER_S = "train_images_per_s"  # a published key, kept without its group
PUBLISHED_COST = frozenset({TRAINABLE_PARAMS, TRAIN_IMAGES_PER_S})
COST_ENCODE_IMAGES_PER_S = cost("encode_images_per_s")
COST_ENCODE_S = cost("encode_s")
COST_EMBED_GALLERY_S = cost("embed_gallery_s")
COST_ZEROSHOT_PROMPTS = cost("zeroshot_prompts")
DATA_ANSWER_VOCAB = data("answer_vocab")
DATA_QUESTIONS_TRUNCATED = data("questions_truncated")
# a report run's own metrics (it trains nothing, so it has its own group)
REPORT_RUNS = "report_runs"
REPORT_UNFINISHED_RUNS = "report_unfinished_runs"


def group_of(metric: str) -> str | None:
    """The group of a run's metric key, None for a key outside the scheme."""
    if metric in PUBLISHED_COST:
        return COST
    head = metric.split(SEP, 1)[0]
    return head if head in GROUPS and SEP in metric else None
