"""What each task and each strategy is: the one table the config, the experiments, the studies and
the report read, so adding a task or an adapter-producing strategy means adding a row here.

It imports nothing heavy: the CLI validates a task x strategy pair before torch or MLflow load.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StrategyKind:
    """What a fine-tuning strategy does, as the experiments ask it (never by its name)."""

    name: str
    trains: bool
    trains_encoder: bool
    produces_adapter: bool
    summary: str


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
                 summary="every parameter trains"),
    StrategyKind("lora", trains=True, trains_encoder=True, produces_adapter=True,
                 summary="low-rank adapters, registered in the Model Registry"),
)}


@dataclass(frozen=True)
class TaskSpec:
    """Everything outside a task's own experiment module needs to know about the task.

    `runner` is "module:function", imported only when a run starts. `selection_metric` picks the
    registered adapter version the `best` alias points at (higher is better). `test_set_params`
    are the parameters besides `dataset` that change what the test set is, so reports keep their
    runs apart. `samples_table` is the per-sample artifact a report re-scores (None: `no_samples`
    says why).
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

    def check_strategy(self, strategy: str) -> str | None:
        """Why `strategy` does not apply to this task (None when it does)."""
        if strategy in self.strategies:
            return None
        hint = " (frozen encoders with a trained head are strategy=frozen)" if strategy == "linear" and "frozen" in self.strategies else ""
        return f"task={self.name} takes strategy {'|'.join(self.strategies)}, not '{strategy}'{hint}"


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec(
        name="classification", title="classification",
        runner="medvlm.experiments.classification:run_classification",
        strategies=("zeroshot", "linear", "partial", "full", "lora"),
        primary_metric="test_auc", selection_metric="val_auc",
        zero_shot_metrics=("test_auc", "test_acc", "test_f1"),
        headline_metrics=("test_auc", "test_acc", "test_f1"),
        test_set_params=("size",), samples_table="predictions.json"),
    TaskSpec(
        name="retrieval", title="image-text retrieval",
        runner="medvlm.experiments.retrieval:run_retrieval",
        strategies=("zeroshot", "partial", "full", "lora"),
        primary_metric="test_image_to_text_R1", selection_metric="val_mean_recall",
        zero_shot_metrics=("test_image_to_text_R1", "test_image_to_text_R5", "test_image_to_text_R10",
                           "test_text_to_image_R1", "test_text_to_image_R5", "test_text_to_image_R10"),
        headline_metrics=("test_image_to_text_R1", "test_image_to_text_R5", "test_image_to_text_R10"),
        test_set_params=("subset",), samples_table=None, no_samples="retrieval runs log no per-query ranks"),
    TaskSpec(
        name="vqa", title="VQA",
        runner="medvlm.experiments.vqa:run_vqa",
        strategies=("zeroshot", "frozen", "partial", "full", "lora"),
        primary_metric="test_acc", selection_metric="val_acc",
        zero_shot_metrics=(),
        headline_metrics=("test_acc", "test_acc_open", "test_acc_closed"),
        test_set_params=("split", "max_rows"), samples_table="examples.json"),
)}
