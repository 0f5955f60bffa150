"""What each task and each strategy is: the one table the config, the experiments, the studies and
the report read, so adding a task or an adapter-producing strategy means adding a row here.

It imports nothing heavy: the CLI validates a task x strategy pair before torch or MLflow load.
"""

from __future__ import annotations

from dataclasses import dataclass

from medvlm.names import test, val


@dataclass(frozen=True)
class StrategyKind:
    """What a fine-tuning strategy does, as the experiments ask it (never by its name).

    `adds_lora`: the strategy's adapter is peft LoRA weights over the network (else its trained heads alone).
    """

    name: str
    trains: bool
    trains_encoder: bool
    produces_adapter: bool
    summary: str
    trains_every_weight: bool = False
    adds_lora: bool = False


STRATEGY_KINDS: dict[str, StrategyKind] = {s.name: s for s in (
    StrategyKind("zeroshot", trains=False, trains_encoder=False, produces_adapter=False,
                 summary="no training: class prompts, embeddings or answer ranking"),
    StrategyKind("linear", trains=True, trains_encoder=False, produces_adapter=False,
                 summary="frozen encoder, a linear head on cached image embeddings"),
    StrategyKind("frozen", trains=True, trains_encoder=False, produces_adapter=False,
                 summary="frozen encoders, a task head on cached token features"),
    StrategyKind("partial", trains=True, trains_encoder=True, produces_adapter=False,
                 summary="projection heads and logit scale train"),
    StrategyKind("full", trains=True, trains_encoder=True, produces_adapter=False,
                 summary="every parameter trains", trains_every_weight=True),
    StrategyKind("lora", trains=True, trains_encoder=True, produces_adapter=True,
                 summary="low-rank adapters, registered in the Model Registry", adds_lora=True),
    StrategyKind("mlp", trains=True, trains_encoder=True, produces_adapter=True,
                 summary="generative models: only the multimodal projector trains, registered as an adapter"),
)}


@dataclass(frozen=True)
class TaskSpec:
    """Everything outside a task's own experiment module needs to know about the task.

    `runner` is "module:function", imported only when a run starts. `selection_metric` picks the
    registered adapter version the `best` alias points at (`selection_higher`: is higher better).
    `test_set_params` are the parameters besides `dataset` that change what the test set is, so
    reports keep their runs apart. `samples_table` is the per-sample artifact a report re-scores
    (None: `no_samples` says why). `generative` is the same task's row for generative (LLaVA-family)
    models, which answer by generation and take other strategies.
    """

    name: str
    title: str
    runner: str
    strategies: tuple[str, ...]
    primary_metric: str
    selection_metric: str
    zero_shot_metrics: tuple[str, ...]
    headline_metrics: tuple[str, ...]
    test_set_params: tuple[str, ...]
    samples_table: str | None
    no_samples: str = ""
    models: str = "CLIP-family"
    selection_higher: bool = True
    generative: TaskSpec | None = None

    def for_model(self, generative: bool) -> TaskSpec:
        """The row for a generative or a CLIP-family model."""
        return self.generative if generative and self.generative is not None else self

    def check_strategy(self, strategy: str) -> str | None:
        """Why `strategy` applies to no model of this task (None when some model takes it): the config's check."""
        rows = [self] + ([self.generative] if self.generative is not None else [])
        if any(strategy in row.strategies for row in rows):
            return None
        allowed = "|".join(dict.fromkeys(s for row in rows for s in row.strategies))
        hint = " (frozen encoders with a trained head are strategy=frozen)" if strategy == "linear" and "frozen" in allowed else ""
        return f"task={self.name} takes strategy {allowed}, not '{strategy}'{hint}"

    def check_model_strategy(self, strategy: str, model: str) -> str | None:
        """Why `strategy` does not apply to this row's models (None when it does)."""
        if strategy in self.strategies:
            return None
        return f"strategy={strategy} does not apply to {self.models} models such as {model}; use {', '.join(self.strategies)}"


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec(
        name="classification", title="classification",
        runner="medvlm.experiments.classification:run_classification",
        strategies=("zeroshot", "linear", "partial", "full", "lora"),
        primary_metric=test("auc"), selection_metric=val("auc"),
        zero_shot_metrics=(test("auc"), test("acc"), test("f1"), test("auc_hard")),
        headline_metrics=(test("auc"), test("acc"), test("f1"), test("auc_hard")),
        test_set_params=("size",), samples_table="predictions.json"),
    TaskSpec(
        name="retrieval", title="image-text retrieval",
        runner="medvlm.experiments.retrieval:run_retrieval",
        strategies=("zeroshot", "partial", "full", "lora"),
        primary_metric=test("image_to_text_R1"), selection_metric=val("mean_recall"),
        zero_shot_metrics=(test("image_to_text_R1"), test("image_to_text_R5"), test("image_to_text_R10"),
                           test("text_to_image_R1"), test("text_to_image_R5"), test("text_to_image_R10")),
        headline_metrics=(test("image_to_text_R1"), test("image_to_text_R5"), test("image_to_text_R10")),
        test_set_params=("subset",), samples_table=None, no_samples="retrieval runs log no per-query ranks"),
    TaskSpec(
        name="vqa", title="VQA",
        runner="medvlm.experiments.vqa:run_vqa",
        strategies=("zeroshot", "frozen", "partial", "full", "lora"),
        primary_metric=test("acc"), selection_metric=val("acc"),
        zero_shot_metrics=(),
        headline_metrics=(test("acc"), test("acc_open"), test("acc_closed")),
        test_set_params=("split", "max_rows"), samples_table="examples.json",
        generative=TaskSpec(
            name="vqa", title="VQA (generated answers)", models="generative (LLaVA)",
            runner="medvlm.experiments.generative_vqa:run_generative_vqa",
            strategies=("zeroshot", "mlp", "lora", "full"),
            primary_metric=test("acc"), selection_metric=val("loss"), selection_higher=False,
            zero_shot_metrics=(), headline_metrics=(test("acc"), test("closed_acc"), test("open_recall")),
            test_set_params=("split", "max_rows"), samples_table="examples.json")),
)}
