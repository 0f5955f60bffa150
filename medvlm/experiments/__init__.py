"""One experiment per task; each runs inside the active MLflow run and returns its test metrics."""

from __future__ import annotations

from collections.abc import Callable

from accelerate.utils import set_seed

from medvlm.config import RunConfig
from medvlm.tracking.session import tracked_run


def _classification(cfg: RunConfig) -> dict[str, float]:
    from medvlm.experiments.classification import run_classification  # lazy: each task loads only its own modules

    return run_classification(cfg)


def _vqa(cfg: RunConfig) -> dict[str, float]:
    """CLIP models rank answers with a BAN head; LLaVA-family models generate them."""
    from medvlm.zoo.factory import is_generative

    if is_generative(cfg.model):
        from medvlm.experiments.generative_vqa import run_generative_vqa  # lazy: each task loads only its own modules

        return run_generative_vqa(cfg)
    from medvlm.experiments.vqa import run_vqa

    return run_vqa(cfg)


def _retrieval(cfg: RunConfig) -> dict[str, float]:
    from medvlm.experiments.retrieval import run_retrieval  # lazy: each task loads only its own modules

    return run_retrieval(cfg)


EXPERIMENTS: dict[str, Callable[[RunConfig], dict[str, float]]] = {
    "classification": _classification,
    "retrieval": _retrieval,
    "vqa": _vqa,
}


def run_experiment(cfg: RunConfig, nested: bool = False, extra_tags: dict[str, str] | None = None,
                   commit: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Dispatch to the task's experiment inside the run `cfg` defines (a nested child run for study trials).

    Seeding first makes head and adapter initialisation part of the seed, so CPU reruns repeat exactly.
    `commit(run_id, metrics)` runs before the run may end FINISHED (a study trial's fence); if it
    raises, the run ends FAILED or KILLED instead.
    """
    with tracked_run(cfg, nested=nested, extra_tags=extra_tags) as run:
        set_seed(cfg.seed)
        metrics = EXPERIMENTS[cfg.task](cfg)
        if commit is not None:
            commit(run.info.run_id, metrics)
        return metrics
