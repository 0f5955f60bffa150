"""One image-text retrieval experiment: zero-shot or contrastive fine-tuning, recall@k on the whole
test split, tracked.

Strategies: `zeroshot` embeds the test gallery with the frozen model; `partial`, `full` and
`lora` fine-tune with symmetric InfoNCE (`medvlm.tasks.retrieval`), stop early on the validation
loss and embed the test gallery with the best weights. The gallery is the whole test split, each
image and caption embedded once; recall is computed in chunks (`medvlm.metrics.retrieval`).

MLflow metric names cannot hold '@', so recall@k is logged as `..._R<k>`:
`test_image_to_text_R1`, `test_text_to_image_R10`, `val_image_to_text_R5` per epoch. Also logged:
`test_mean_recall` (mean of the six), median ranks, `test_tied_queries` (queries whose best positive
ties another item's score, counted against the query; also per direction), per split the image/caption counts, captions
the tokenizer truncated, duplicate captions and skipped rows; a table of the worst-ranked queries
and the recall@k-against-k curve (plot and table).
"""

from __future__ import annotations

import sys
import time

import mlflow
import numpy as np
import pandas as pd
import torch

from medvlm.adapters.base import Adapter
from medvlm.adapters.retrieval import RetrievalAdapterModel
from medvlm.config import RunConfig
from medvlm.data.captions import SPLITS, CaptionData, CaptionSplit, load_captions
from medvlm.data.subsample import stratified_indices
from medvlm.engine.trainer import count_trainable
from medvlm.experiments.common import fit_evaluate_register, start
from medvlm.metrics.retrieval import RetrievalResult, retrieval_metrics, small_gallery_warning
from medvlm.strategies import get_strategy
from medvlm.tasks.retrieval import DIRECTIONS, DualEncoder, RetrievalObjective, TokenizedPairs, embed_gallery, summary
from medvlm import names
from medvlm.tracking.figures import figure_path, log_figures
from medvlm.tracking.plots import recall_figure
from medvlm.tracking.session import WARNING_TAG_PREFIX, describe, log_dataset
from medvlm.zoo.base import TextBatch

CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)
WORST_QUERIES = 50
SMALL_GALLERY_TAG = WARNING_TAG_PREFIX + "small_gallery"


def apply_train_fraction(data: CaptionData, cfg: RunConfig) -> CaptionData:
    """`train_fraction` of the training images with all their captions (and of validation with
    `subsample_val`), keeping the radiology/non-radiology share."""
    for name in ("train", "val") if cfg.subsample_val else ("train",):
        split = data.splits[name]
        data.splits[name] = split.select_images(
            stratified_indices(np.asarray(split.image_subsets), cfg.train_fraction, cfg.subsample_seed))
    return data


def log_lineage(data: CaptionData) -> None:
    for name, split in data.splits.items():
        counts = {"images": split.n_images, "captions": len(split.captions), "skipped": split.skipped}
        log_dataset(f"{data.name}/{name}", data.source, split.digest(), context=name,
                    extra={**counts, "subset": data.subset, "split": data.split},
                    schema={"image": "binary", "caption": "string"}, profile={**counts, "subset": data.subset})


def log_counts(data: CaptionData, tokens: dict[str, TextBatch]) -> None:
    """Per split: images, captions, captions cut by the tokenizer, duplicate captions, skipped rows."""
    counts = {}
    for name, split in data.splits.items():
        counts.update({names.key(name, "images"): split.n_images, names.key(name, "captions"): len(split.captions),
                       names.key(name, "captions_truncated"): tokens[name].truncated,
                       names.key(name, "duplicate_captions"): split.duplicate_captions,
                       **{names.key(name, f"skipped_{why}"): n for why, n in split.skipped.items()}})
    mlflow.log_metrics(counts)


@torch.no_grad()
def worst_queries(result: RetrievalResult, image_emb: torch.Tensor, text_emb: torch.Tensor, split: CaptionSplit,
                  n: int = WORST_QUERIES) -> pd.DataFrame:
    """The n worst-ranked queries of each direction: the query, its image, the rank and score of its best
    positive, and what came first instead (with that item's image, which shows a duplicate caption winning)."""
    names, captions, t2i = split.image_names, split.captions, split.text_to_image
    frames = []
    for direction, ranks in zip(DIRECTIONS, (result.i2t_ranks, result.t2i_ranks)):
        to_text = direction == "image_to_text"
        query, gallery = (image_emb, text_emb) if to_text else (text_emb, image_emb)
        order = torch.argsort(ranks, descending=True, stable=True)[:n]
        scores = (query[order.to(query.device)] @ gallery.T).float().cpu()
        query_image = order if to_text else t2i[order]
        gallery_image = t2i if to_text else torch.arange(split.n_images)
        positive = scores.masked_fill(gallery_image[None, :] != query_image[:, None], -torch.inf).max(dim=1)
        top = scores.max(dim=1)
        item = (lambda j: captions[j]) if to_text else (lambda j: names[j])
        frames.append(pd.DataFrame({
            "direction": direction,
            "query_index": order.numpy(),
            "query": [names[i] if to_text else captions[i] for i in order.tolist()],
            "query_image": [names[i] for i in query_image.tolist()],
            "rank": ranks[order].numpy(),
            "best_positive": [item(j) for j in positive.indices.tolist()],
            "positive_score": positive.values.numpy(),
            "top1": [item(j) for j in top.indices.tolist()],
            "top1_image": [names[i] for i in gallery_image[top.indices].tolist()],
            "top1_score": top.values.numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def recall_curve(result: RetrievalResult) -> pd.DataFrame:
    """Recall@k for k in CURVE_KS up to each direction's gallery size (and at the full gallery)."""
    rows = []
    for direction, ranks, gallery in (("image_to_text", result.i2t_ranks, len(result.t2i_ranks)),
                                      ("text_to_image", result.t2i_ranks, len(result.i2t_ranks))):
        for k in sorted({k for k in CURVE_KS if k < gallery} | {gallery}):
            rows.append({"direction": direction, "k": k, "recall": float((ranks <= k).float().mean())})
    return pd.DataFrame(rows)


def log_test_results(result: RetrievalResult, image_emb: torch.Tensor, text_emb: torch.Tensor,
                     split: CaptionSplit, cfg: RunConfig) -> dict[str, float]:
    metrics = {names.test(k): v for k, v in summary(result).items()}
    mlflow.log_metrics(metrics)
    warning = small_gallery_warning(len(image_emb), len(text_emb))
    if warning:
        mlflow.set_tag(SMALL_GALLERY_TAG, warning)
        print(f"medvlm: warning: {warning}", file=sys.stderr)
    mlflow.log_table(worst_queries(result, image_emb, text_emb, split), "worst_queries.json")
    curve = recall_curve(result)
    mlflow.log_table(curve, "recall_at_k.json")
    log_figures({figure_path("plots/recall_at_k", cfg.figure_format): recall_figure(curve, describe(cfg))})
    return metrics


def run_retrieval(cfg: RunConfig) -> dict[str, float]:
    """Run inside an active MLflow run; returns the test metrics."""
    accelerator, clip = start(cfg)
    device = accelerator.device
    strategy = get_strategy(cfg.strategy)
    data = load_captions(cfg.dataset, data_root=cfg.data_root, subset=cfg.subset,
                         splits=SPLITS if strategy.kind.trains else ("test",), seed=cfg.seed, image_column=cfg.image_column,
                         caption_column=cfg.caption_column)
    if strategy.kind.trains and cfg.train_fraction < 1.0:
        data = apply_train_fraction(data, cfg)
    log_lineage(data)
    tokens = {name: clip.tokenize(split.captions) for name, split in data.splits.items()}
    log_counts(data, tokens)
    clip = strategy.prepare(clip, cfg)
    encoder = DualEncoder(clip)
    mlflow.log_metric(names.TRAINABLE_PARAMS, count_trainable(encoder))
    size = clip.preprocess.image_size
    sets = {s: TokenizedPairs(data.splits[s].pairs(size), tokens[s]) for s in ("train", "val") if s in data.splits}

    def test() -> dict[str, float]:
        split = data.splits["test"]
        t0 = time.perf_counter()
        image_emb, text_emb = embed_gallery(encoder, split, tokens["test"], cfg.eval_batch_size, device, cfg.precision,
                                            cache=not strategy.kind.trains, num_workers=cfg.num_workers)
        mlflow.log_metric(names.COST_EMBED_GALLERY_S, time.perf_counter() - t0)
        image_emb, text_emb = image_emb.to(device), text_emb.to(device)
        result = retrieval_metrics(image_emb, text_emb, split.text_to_image.to(device))
        return log_test_results(result, image_emb, text_emb, split, cfg)

    return fit_evaluate_register(cfg, accelerator, clip.spec.pin, RetrievalObjective(encoder, cfg.batch_size), sets.get("train"),
                                 sets.get("val"), test, lambda: Adapter(RetrievalAdapterModel(), encoder.clip.spec.pin,
                                                                        encoder.clip.net, meta={"subset": data.subset}))

