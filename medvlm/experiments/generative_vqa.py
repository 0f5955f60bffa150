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

from medvlm.config import RunConfig
from medvlm.data.vqa import SPLITS, VQAData, VQARows, load_vqa
from medvlm.engine.trainer import Checkpoints, count_trainable, fit, make_accelerator
from medvlm.errors import ConfigError
from medvlm.metrics.generative_vqa import generative_metrics
from medvlm.strategies import get_strategy
from medvlm.tasks.generative_vqa import PromptTable, TeacherForced, answer_all, build_prompts, token_mean
from medvlm.tracking import plots
from medvlm.tracking.session import log_epoch
from medvlm.zoo.factory import load_vlm
from medvlm.zoo.llava import GenerativeVLM

GENERATIVE_STRATEGIES = ("zeroshot", "mlp", "lora", "full")


class AnswerObjective:
    """Token-mean NLL of the answer tokens; validation reports it and its perplexity."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_mean(outputs)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"answer_ppl": float(torch.exp(token_mean(outputs)))}


def check(cfg: RunConfig) -> None:
    if cfg.strategy not in GENERATIVE_STRATEGIES:
        raise ConfigError(f"strategy={cfg.strategy} does not apply to generative (LLaVA) models; use "
                          f"{', '.join(GENERATIVE_STRATEGIES)}")
    if cfg.lora_parts and cfg.strategy != "lora":
        raise ConfigError(f"lora_parts={cfg.lora_parts} needs strategy=lora")


def model_dtype(cfg: RunConfig, mixed: str) -> torch.dtype:
    """Frozen weights in bf16 under bf16 mixed precision (what fits a 7B model); fp32 on CPU or with full training."""
    return torch.bfloat16 if mixed == "bf16" and cfg.strategy != "full" else torch.float32


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


def log_test(vlm: GenerativeVLM, data: VQAData, cfg: RunConfig, history: list[dict[str, float]]) -> dict[str, float]:
    test = data.splits["test"]
    table = build_prompts(vlm, test["question"].tolist())
    image_index = torch.tensor(test["image_index"].to_numpy(np.int64))
    predictions = answer_all(vlm, data.images, image_index, table, cfg.max_new_tokens, cfg.eval_batch_size)
    scores, scored, groups = generative_metrics(test["answer"].tolist(), predictions, test["closed"].to_numpy(bool),
                                                test[data.meta_columns])
    if cfg.judge:
        from medvlm.metrics.judge import judge_open_answers

        scores.update(judge_open_answers(cfg.judge, test, predictions))
    metrics = {f"test_{k}": v for k, v in scores.items()}
    mlflow.log_metrics(metrics)
    mlflow.log_table(examples_table(data, predictions, scored), "examples.json")
    mlflow.log_table(groups, "breakdown.json")
    plots.log_learning_curves(history)
    return metrics


def run_generative_vqa(cfg: RunConfig) -> dict[str, float]:
    """Run inside an active MLflow run; returns the test metrics."""
    from medvlm.experiments.vqa import apply_train_fraction, log_lineage  # shared with the CLIP VQA experiment

    check(cfg)
    accelerator = make_accelerator(cfg)
    vlm = load_vlm(cfg.model, device=accelerator.device, dtype=model_dtype(cfg, accelerator.mixed_precision))
    mlflow.set_tags({"medvlm.generative": "true", "medvlm.judge": cfg.judge or "none"})
    data = load_vqa(cfg.dataset, data_root=cfg.data_root, image_size=vlm.preprocess.image_size, split=cfg.split,
                    seed=cfg.seed, image_column=cfg.image_column, max_rows=cfg.max_rows, pad=vlm.pad)
    data = apply_train_fraction(data, cfg)
    log_lineage(data)
    mlflow.log_metrics({f"n_{s}": len(data.splits[s]) for s in SPLITS})
    mlflow.log_dict({"template": vlm.template, "image_tokens": vlm.image_tokens,
                     "max_new_tokens": cfg.max_new_tokens, "decoding": "greedy",
                     "example_prompt": vlm.render(str(data.splits["test"]["question"].iloc[0]))}, "prompting.json")
    vlm = get_strategy(cfg.strategy).prepare(vlm, cfg)
    trainable_in_fp32(vlm)
    mlflow.log_metric("trainable_params", count_trainable(vlm))
    history: list[dict[str, float]] = []
    if cfg.strategy != "zeroshot":
        if cfg.gradient_checkpointing:
            vlm.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        tables = {s: build_prompts(vlm, data.splits[s]["question"].tolist(), data.splits[s]["answer"].tolist())
                  for s in ("train", "val")}
        sets = teacher_forced_sets(data, tables)
        # keyed like every other task's: the resumed run's id, so each rank reads rank 0's checkpoint
        checkpoints = Checkpoints.for_run(cfg, cfg.resume or mlflow.active_run().info.run_id, vlm.spec.pin)
        # fit leaves the best weights loaded in `vlm` itself
        result = fit(AnswerObjective(TeacherForced(vlm)), sets["train"], sets["val"], cfg, accelerator, checkpoints,
                     log_epoch)
        history = result.history
        mlflow.log_metrics({"train_images_per_s": result.images_per_s, "best_epoch": result.best_epoch + 1,
                            "epochs_run": result.epochs_run})
    metrics = log_test(vlm, data, cfg, history)
    if cfg.strategy in ("mlp", "lora") and cfg.register_adapter:
        from medvlm.adapters.generative_vqa import register

        register(cfg, vlm, ("val_loss", min(r["val_loss"] for r in history), False))
    if cfg.strategy != "zeroshot":
        checkpoints.clear()
    return metrics

