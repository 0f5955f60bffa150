"""One VQA experiment: zero-shot answer ranking or a trained BAN head, evaluated on test and tracked.

Strategies: `zeroshot` ranks the vocabulary's answers by CLIP similarity (no training);
`frozen` trains the head on token features cached once per (model, data); `partial`, `full`
and `lora` train the head together with (parts of) the encoders. Every run logs accuracy and
weighted F1 overall/open/closed, a question/content-type breakdown, the out-of-vocabulary
count, the error-taxonomy counts and a table of every test prediction with its tag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medvlm.adapters.base import Adapter
from medvlm.adapters.vqa import VQAAdapterModel
from medvlm.config import RunConfig
from medvlm.data.base import TensorRows
from medvlm.data.subsample import stratified_indices
from medvlm.data.transforms import to_model_input
from medvlm.data.vqa import SPLITS, VQAData, VQARows, load_vqa
from medvlm.engine.features import cached_features
from medvlm.engine.trainer import count_trainable, evaluate, freeze_unused
from medvlm.experiments.common import fit_evaluate_register, start
from medvlm.metrics.vqa import breakdown, breakdown_metrics, vqa_metrics
from medvlm.metrics.vqa_taxonomy import TAGS, error_tag
from medvlm.progress import tracked
from medvlm.strategies import get_strategy
from medvlm.tasks.classification import text_embeddings
from medvlm.tasks.vqa import AnswerVocab, BANHead, CachedVQA, VQAModel, VQAObjective, tokenize_questions
from medvlm import names
from medvlm.tracking.session import log_dataset
from medvlm.zoo import ClipModel
from medvlm.zoo.base import TextBatch

ZERO_SHOT_PROMPT = "{question} {answer}"


@dataclass
class Questions:
    """Every distinct question tokenised once (sorted: the seed does not change it); `rows[split]` maps each QA row to its question."""

    tokens: TextBatch
    rows: dict[str, torch.Tensor]
    max_len: int

    @classmethod
    def of(cls, clip: ClipModel, data: VQAData) -> Questions:
        distinct = sorted(set(pd.concat([data.splits[s]["question"] for s in SPLITS])))
        index = {q: i for i, q in enumerate(distinct)}
        tokens, max_len = tokenize_questions(clip, distinct)
        rows = {s: torch.tensor(data.splits[s]["question"].map(index).to_numpy(np.int64)) for s in SPLITS}
        return cls(tokens, rows, max_len)


def apply_train_fraction(data: VQAData, cfg: RunConfig) -> VQAData:
    """`train_fraction` of the training QA rows (and validation with `subsample_val`), keeping the open/closed share."""
    chosen = ("train", "val") if cfg.subsample_val else ("train",)
    for name in chosen:
        rows = data.splits[name]
        keep = stratified_indices(rows["closed"].to_numpy(np.int64), cfg.train_fraction, cfg.subsample_seed)
        data.splits[name] = rows.iloc[keep].reset_index(drop=True)
    return data


def targets_of(data: VQAData, vocab: AnswerVocab) -> dict[str, torch.Tensor]:
    """[N, 2] per split: answer index (0 = unknown) and closed flag."""
    return {s: torch.from_numpy(np.stack([vocab.encode(df["answer"]), df["closed"].to_numpy(np.int64)], axis=1))
            for s, df in data.splits.items()}


def image_rows(data: VQAData, split: str) -> torch.Tensor:
    return torch.tensor(data.splits[split]["image_index"].to_numpy(np.int64))


def encoder_sets(data: VQAData, questions: Questions, targets: dict[str, torch.Tensor]) -> dict[str, VQARows]:
    """Raw uint8 images and token ids: the encoders run (and train) inside the model."""
    return {s: VQARows({"images": (data.images, image_rows(data, s)),
                        "input_ids": (questions.tokens.input_ids, questions.rows[s]),
                        "attention_mask": (questions.tokens.attention_mask, questions.rows[s])}, targets[s])
            for s in SPLITS}


def cached_sets(clip: ClipModel, data: VQAData, questions: Questions, targets: dict[str, torch.Tensor],
                cfg: RunConfig, device: torch.device) -> dict[str, VQARows]:
    """Image token grids per distinct image and question states per distinct question, encoded once (disk-cached)."""
    images = TensorRows(data.images, torch.arange(len(data.images)))
    grids, _ = cached_features(clip, images, cfg.eval_batch_size, device, cfg.precision, kind="vqa_image_tokens",
                               encode=lambda x: clip.image_tokens(to_model_input(x, clip.preprocess)))
    n = questions.max_len
    packed = torch.stack([questions.tokens.input_ids, questions.tokens.attention_mask.long()], dim=1)
    states, _ = cached_features(clip, TensorRows(packed, torch.arange(len(packed))), cfg.eval_batch_size, device,
                                cfg.precision, kind=f"vqa_text_tokens:{n}",
                                encode=lambda x: clip.text_tokens(TextBatch(x[:, 0, :n], x[:, 1, :n].bool()))[0])
    mask = questions.tokens.attention_mask[:, :n].bool()
    return {s: VQARows({"image_tokens": (grids, image_rows(data, s)), "text_tokens": (states, questions.rows[s]),
                        "text_mask": (mask, questions.rows[s])}, targets[s])
            for s in SPLITS}


@torch.no_grad()
def token_dims(clip: ClipModel, data: VQAData, questions: Questions) -> tuple[int, int]:
    """Widths of the image and question tokens, from one real image and question."""
    device = next(clip.parameters()).device
    v = clip.image_tokens(to_model_input(data.images[:1].to(device), clip.preprocess))
    q, _ = clip.text_tokens(questions.tokens[:1].to(device))
    return int(v.shape[-1]), int(q.shape[-1])


@torch.no_grad()
def zero_shot_logits(clip: ClipModel, data: VQAData, vocab: AnswerVocab, cfg: RunConfig,
                     device: torch.device) -> torch.Tensor:
    """logit_scale · cos(image, "question answer") for each candidate answer; -inf for non-candidates.

    Open questions rank every vocabulary answer but `unknown`; closed questions only the
    answers seen for closed questions. Each distinct question's prompts are encoded once.
    """
    test = data.splits["test"]
    distinct = data.image_indices("test")
    images = TensorRows(data.images[distinct], torch.as_tensor(distinct))
    embeddings, _ = cached_features(clip, images, cfg.eval_batch_size, device, cfg.precision)
    position = np.zeros(len(data.images), dtype=np.int64)
    position[distinct] = np.arange(len(distinct))
    row_embeddings = F.normalize(embeddings, dim=-1)[position[test["image_index"].to_numpy()]].to(device)
    everything = list(range(1, len(vocab)))
    candidates = {False: everything, True: vocab.closed or everything}
    scale = clip.logit_scale().float()
    logits = torch.full((len(test), len(vocab)), float("-inf"))
    prompts = 0
    groups = test.groupby(["question", "closed"], sort=False).indices
    for (question, closed), rows in tracked(groups.items(), "zero-shot VQA, distinct questions", len(groups)):
        ids = candidates[bool(closed)]
        texts = text_embeddings(clip, [ZERO_SHOT_PROMPT.format(question=question, answer=vocab.answers[i]) for i in ids])
        logits[np.ix_(rows, ids)] = (scale * row_embeddings[rows] @ texts.T).cpu()
        prompts += len(ids)
    mlflow.log_metric(names.COST_ZEROSHOT_PROMPTS, prompts)
    return logits


def log_lineage(data: VQAData) -> None:
    for split, rows in data.splits.items():
        images = int(rows["image_index"].nunique())
        profile = {"rows": len(rows), "images": images, "closed": int(rows["closed"].sum()),
                   "open": int((~rows["closed"]).sum()), "distinct_answers": int(rows["answer"].nunique())}
        log_dataset(f"{data.name}/{split}", data.source, data.split_digest(split), context=split,
                    extra={"n": len(rows), "images": images, "split": data.split},
                    schema={"image": "binary", "question": "string", "answer": "string", "closed": "boolean"},
                    profile=profile)


def examples_table(data: VQAData, vocab: AnswerVocab, y: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """Every test question with its prediction and, where wrong, its taxonomy tag."""
    test = data.splits["test"]
    predictions = vocab.decode(pred)
    tags = [error_tag(a, p) if t != q else None for a, p, t, q in zip(test["answer"], predictions, y, pred)]
    return pd.DataFrame({
        "image": test["image_name"], "question": test["question"], "answer": test["answer"],
        "prediction": predictions, "correct": y == pred, "oov": y == 0,
        "answer_type": np.where(test["closed"], "closed", "open"), "tag": [t or "" for t in tags],
        **{c: test[c] for c in data.meta_columns},
    })


def log_test_results(logits: torch.Tensor, targets: torch.Tensor, data: VQAData, vocab: AnswerVocab) -> dict[str, float]:
    y, pred, closed = targets[:, 0].numpy(), logits.argmax(dim=1).numpy(), targets[:, 1].numpy().astype(bool)
    scores = vqa_metrics(y, pred, closed)
    groups = breakdown(y, pred, data.splits["test"][data.meta_columns])
    scores.update(breakdown_metrics(groups))
    examples = examples_table(data, vocab, y, pred)
    counts = examples["tag"].value_counts()
    scores.update({f"err_{tag.replace('-', '_')}": float(counts.get(tag, 0)) for tag in TAGS})
    metrics = {names.test(k): v for k, v in scores.items()}
    mlflow.log_metrics(metrics)
    mlflow.log_table(examples, "examples.json")
    mlflow.log_table(groups, "breakdown.json")
    return metrics


def run_vqa(cfg: RunConfig) -> dict[str, float]:
    """Run inside an active MLflow run; returns the test metrics."""
    accelerator, clip = start(cfg)
    device = accelerator.device
    strategy = get_strategy(cfg.strategy)
    data = load_vqa(cfg.dataset, data_root=cfg.data_root, image_size=clip.preprocess.image_size, split=cfg.split,
                    seed=cfg.seed, image_column=cfg.image_column,
                    question_column=cfg.question_column, answer_column=cfg.answer_column, max_rows=cfg.max_rows)
    data = apply_train_fraction(data, cfg)
    log_lineage(data)
    trainval = pd.concat([data.splits["train"], data.splits["val"]])
    vocab = AnswerVocab.build(trainval["answer"], trainval["closed"])
    targets = targets_of(data, vocab)
    mlflow.log_dict({**vocab.to_dict(), "split": data.split}, "answers.json")
    mlflow.log_metrics({names.DATA_ANSWER_VOCAB: len(vocab), **{names.examples(s): len(data.splits[s]) for s in SPLITS}})
    clip = strategy.prepare(clip, cfg)

    if not strategy.kind.trains:
        mlflow.log_metric(names.TRAINABLE_PARAMS, 0)
        return fit_evaluate_register(cfg, accelerator, clip.spec.pin, None, None, None, lambda: log_test_results(
            zero_shot_logits(clip, data, vocab, cfg, device), targets["test"], data, vocab))

    questions = Questions.of(clip, data)
    mlflow.log_metric(names.DATA_QUESTIONS_TRUNCATED, questions.tokens.truncated)
    if strategy.kind.trains_encoder:
        sets = encoder_sets(data, questions, targets)
        v_dim, q_dim = token_dims(clip, data, questions)
    else:
        t0 = time.perf_counter()
        sets = cached_sets(clip, data, questions, targets, cfg, device)
        mlflow.log_metric(names.COST_ENCODE_S, time.perf_counter() - t0)
        v_dim, q_dim = (sets["train"].fields[k][0].shape[-1] for k in ("image_tokens", "text_tokens"))
    head = BANHead(v_dim, q_dim, len(vocab), hidden=cfg.vqa_hidden, glimpses=cfg.vqa_glimpses).to(device)
    module = VQAModel(clip, head) if strategy.kind.trains_encoder else CachedVQA(head)
    if strategy.kind.trains_encoder:
        freeze_unused(module, sets["train"], device)  # e.g. `partial`'s logit scale: the BAN head never uses it
    objective = VQAObjective(module)
    mlflow.log_metric(names.TRAINABLE_PARAMS, count_trainable(module))

    def test() -> dict[str, float]:
        _, _, logits, _ = evaluate(accelerator, objective, sets["test"], cfg)
        return log_test_results(logits, targets["test"], data, vocab)

    return fit_evaluate_register(cfg, accelerator, clip.spec.pin, objective, sets["train"], sets["val"], test, lambda: Adapter(
        VQAAdapterModel(), clip.spec.pin, clip.net, {"head": head}, {"head": head.config, "vocab": vocab.to_dict()}))
