"""Generative VQA with LLaVA-family models: zero-shot generation, projector-only (`mlp`) or LoRA training.

The same data, splits, lineage, tags and per-epoch metrics as the CLIP VQA experiment; the
answer is generated (greedy, `max_new_tokens`) instead of ranked. Training is teacher-forced on
the answer tokens only, in the engine's Accelerate loop (early stopping on validation answer
loss, gradient accumulation, resume). Test metrics: closed accuracy, open exact match / token
recall / token F1 / BLEU-1, per question and content type, error-taxonomy counts, and a table
of every generated answer. `mlp` and `lora` adapters are registered as `medvlm-<model>-<dataset>-vqa`.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch

from medvlm.adapters.generative_vqa import adapter
from medvlm.catalog import TASKS
from medvlm.config import RunConfig
from medvlm.data.vqa import SPLITS, VQAData, VQARows, load_vqa
from medvlm.engine.trainer import count_trainable, make_accelerator
from medvlm.experiments.common import fit_evaluate_register
from medvlm.experiments.vqa import apply_train_fraction, log_lineage
from medvlm.metrics.generative_vqa import generative_metrics
from medvlm.metrics.judge import judge_open_answers
from medvlm.strategies import get_strategy
from medvlm.tasks.generative_vqa import AnswerObjective, PromptTable, TeacherForced, answer_all, build_prompts
from medvlm import names
from medvlm.zoo.factory import load_vlm
from medvlm.zoo.llava import GenerativeVLM

def model_dtype(cfg: RunConfig, mixed: str) -> torch.dtype:
    """Frozen weights in bf16 under bf16 mixed precision (what fits a 7B model); fp32 on CPU or with full training."""
    return torch.bfloat16 if mixed == "bf16" and not get_strategy(cfg.strategy).kind.trains_every_weight else torch.float32


def trainable_in_fp32(vlm: GenerativeVLM) -> None:
    """The optimiser updates fp32 master copies: trainable weights loaded in bf16 go to fp32."""
    for p in vlm.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def teacher_forced_sets(data: VQAData, tables: dict[str, PromptTable]) -> dict[str, VQARows]:
    sets = {}
    for split in ("train", "val"):
        t, rows = tables[split], data.splits[split]
        n = torch.arange(len(rows))
        image = torch.tensor(rows["image_index"].to_numpy(np.int64))
        targets = torch.stack([n, torch.tensor(rows["closed"].to_numpy(np.int64))], dim=1)
        sets[split] = VQARows({"images": (data.images, image), "input_ids": (t.input_ids, n),
                               "attention_mask": (t.attention_mask, n), "answer_mask": (t.answer_mask, n)}, targets)
    return sets


def examples_table(data: VQAData, predictions: list[str], scored: pd.DataFrame) -> pd.DataFrame:
    test = data.splits["test"]
    return pd.DataFrame({
        "image": test["image_name"], "question": test["question"], "answer": test["answer"],
        "prediction": predictions, "correct": scored["correct"].astype(bool).to_numpy(),
        "yes_no_read": scored["parsed"].to_numpy(), "token_recall": scored["recall"].to_numpy(),
        "answer_type": np.where(test["closed"], "closed", "open"), "tag": scored["tag"].to_numpy(),
        **{c: test[c] for c in data.meta_columns},
    })


def log_test(vlm: GenerativeVLM, data: VQAData, cfg: RunConfig) -> dict[str, float]:
    test = data.splits["test"]
    table = build_prompts(vlm, test["question"].tolist())
    image_index = torch.tensor(test["image_index"].to_numpy(np.int64))
    predictions = answer_all(vlm, data.images, image_index, table, cfg.max_new_tokens, cfg.eval_batch_size)
    scores, scored, groups = generative_metrics(test["answer"].tolist(), predictions, test["closed"].to_numpy(bool),
                                                test[data.meta_columns])
    if cfg.judge:
        scores.update(judge_open_answers(cfg.judge, test, predictions))
    metrics = {names.test(k): v for k, v in scores.items()}
    mlflow.log_metrics(metrics)
    mlflow.log_table(examples_table(data, predictions, scored), "examples.json")
    mlflow.log_table(groups, "breakdown.json")
    return metrics


def run_generative_vqa(cfg: RunConfig) -> dict[str, float]:
    """Run inside an active MLflow run; returns the test metrics."""
    accelerator = make_accelerator(cfg)
    vlm = load_vlm(cfg.model, device=accelerator.device, dtype=model_dtype(cfg, accelerator.mixed_precision))
    mlflow.set_tags({"medvlm.generative": "true", "medvlm.judge": cfg.judge or "none"})
    data = load_vqa(cfg.dataset, data_root=cfg.data_root, image_size=vlm.preprocess.image_size, split=cfg.split,
                    seed=cfg.seed, image_column=cfg.image_column,
                    question_column=cfg.question_column, answer_column=cfg.answer_column, max_rows=cfg.max_rows)
    data = apply_train_fraction(data, cfg)
    log_lineage(data)
    mlflow.log_metrics({names.examples(s): len(data.splits[s]) for s in SPLITS})
    mlflow.log_dict({"template": vlm.template, "image_tokens": vlm.image_tokens,
                     "max_new_tokens": cfg.max_new_tokens, "decoding": "greedy",
                     "example_prompt": vlm.render(str(data.splits["test"]["question"].iloc[0]))}, "prompting.json")
    strategy = get_strategy(cfg.strategy)
    vlm = strategy.prepare(vlm, cfg)
    trainable_in_fp32(vlm)
    mlflow.log_metric(names.TRAINABLE_PARAMS, count_trainable(vlm))
    sets = {}
    if strategy.kind.trains:
        if cfg.gradient_checkpointing:
            vlm.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        tables = {s: build_prompts(vlm, data.splits[s]["question"].tolist(), data.splits[s]["answer"].tolist())
                  for s in ("train", "val")}
        sets = teacher_forced_sets(data, tables)
    # fit leaves the best weights loaded in `vlm` itself
    return fit_evaluate_register(cfg, accelerator, vlm.spec.pin, AnswerObjective(TeacherForced(vlm)), sets.get("train"), sets.get("val"),
                                 lambda: log_test(vlm, data, cfg), lambda: adapter(cfg, vlm),
                                 TASKS["vqa"].for_model(generative=True))
