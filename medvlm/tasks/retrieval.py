"""Image-text retrieval on a CLIP model: the two-tower module, symmetric InfoNCE, the gallery.

Training batches carry the images and the *pre-tokenised* captions of their pairs
(`TokenizedPairs`: captions are tokenised once, a batch is one tensor gather), and
`DualEncoder.forward` runs both towers, so every trained parameter is used inside the
module's forward (as DistributedDataParallel requires). Its output packs, per pair, the
L2-normalised image and text embeddings and the model's logit scale into one tensor (see
`unpack`), because the engine gathers one output tensor per batch.

The loss is CLIP's symmetric InfoNCE with the model's own logit scale, i.e. open_clip's
`ClipLoss`; the scale is capped at 100, as CLIP's training clamps it. Two pairs of one batch that
show the same image (a multi-caption source) get identical image embeddings, and then the
diagonal targets give the same loss and gradients as counting both captions as positives of
both rows, so no special case is needed. InfoNCE depends on the batch: every other pair in it
is a negative. The validation loss is therefore the mean InfoNCE over
consecutive, nearly equal blocks of the validation set no larger than the training batch
(`blockwise_info_nce`), which keeps it on the scale of the training loss; it is comparable
between runs with the same batch size only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvlm.data.base import BatchRows, TensorRows
from medvlm.data.captions import CaptionSplit, IndexedImages
from medvlm.data.transforms import to_model_input
from medvlm.engine.features import cached_features, encode_dataset
from medvlm.metrics.retrieval import DEFAULT_KS, RetrievalResult, retrieval_metrics
from medvlm.zoo.base import ClipModel, TextBatch

MAX_LOGIT_SCALE = 100.0
DIRECTIONS = ("image_to_text", "text_to_image")


class DualEncoder(nn.Module):
    """Both towers of a CLIP model, returning L2-normalised embeddings."""

    def __init__(self, clip: ClipModel):
        super().__init__()
        self.clip = clip

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] at any size -> [B, D]."""
        return F.normalize(self.clip.encode_image(to_model_input(images, self.clip.preprocess)).float(), dim=-1)

    def embed_texts(self, tokens: TextBatch) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """A batch of pairs -> [B, 2D + 1]: image embedding, text embedding, logit scale (see `unpack`)."""
        image = self.embed_images(inputs["images"])
        text = self.embed_texts(TextBatch(inputs["input_ids"], inputs["attention_mask"]))
        scale = self.clip.logit_scale().float().clamp(max=MAX_LOGIT_SCALE).reshape(1, 1).expand(len(image), 1)
        return torch.cat([image, text, scale], dim=1)


def unpack(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 2D + 1] -> (image embeddings [B, D], text embeddings [B, D], logit scale [])."""
    dim = (outputs.shape[1] - 1) // 2
    return outputs[:, :dim], outputs[:, dim:2 * dim], outputs[0, -1]


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of pairs: cross-entropy of `scale * cos` to the diagonal,
    image->text and text->image, averaged."""
    logits = scale * image_emb.float() @ text_emb.float().T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def blockwise_info_nce(outputs: torch.Tensor, block: int) -> torch.Tensor:
    """InfoNCE averaged (weighted by size) over ceil(N / block) consecutive, nearly equal blocks.

    A training batch (N <= block) is one block; a whole validation set becomes batch-sized
    blocks, so no N x N logit matrix is built and a tiny last block does not skew the mean.
    """
    image, text, scale = unpack(outputs)
    parts = math.ceil(len(outputs) / block)
    total = outputs.new_zeros(())
    for img, txt in zip(torch.tensor_split(image, parts), torch.tensor_split(text, parts)):
        total = total + info_nce(img, txt, scale) * len(img)
    return total / len(outputs)


class TokenizedPairs(BatchRows):
    """Training/validation pairs: (images, token ids and mask of their captions) and targets
    [B, 2] = (pair index, image index). Tokens are looked up by pair index with one gather."""

    def __init__(self, pairs: IndexedImages, tokens: TextBatch):
        if len(pairs) != len(tokens):
            raise ValueError(f"{len(pairs)} pairs but {len(tokens)} tokenised captions")
        self.pairs, self.tokens = pairs, tokens

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitems__(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        images, pair = self.pairs.__getitems__(indices)
        inputs = {"images": images, "input_ids": self.tokens.input_ids[pair],
                  "attention_mask": self.tokens.attention_mask[pair]}
        return inputs, torch.stack([pair, self.pairs.image_of_row[pair]], dim=1)


@torch.no_grad()
def embed_gallery(encoder: DualEncoder, split: CaptionSplit, tokens: TextBatch, batch_size: int,
                  device: torch.device, precision: str = "auto", cache: bool = False,
                  num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image embeddings [M, D], text embeddings [T, D]) of a whole split, each image and caption once.

    `cache=True` serves image embeddings from the disk feature cache (frozen, pinned models only:
    after fine-tuning the weights no longer match the pin).
    """
    encoder.eval()
    images = split.images(encoder.clip.preprocess.image_size)
    if cache:
        image_emb, order = cached_features(encoder.clip, images, batch_size, device, precision,
                                           kind="retrieval_image_embedding", encode=encoder.embed_images)
    else:
        image_emb, order = encode_dataset(encoder.embed_images, images, batch_size, device, precision, num_workers)
    packed = torch.stack([tokens.input_ids, tokens.attention_mask.long()], dim=1)
    text_emb, _ = encode_dataset(lambda x: encoder.embed_texts(TextBatch(x[:, 0], x[:, 1].bool())),
                                 TensorRows(packed, torch.arange(len(packed))), batch_size, device, precision,
                                 what="encoding captions")
    if not torch.equal(order, torch.arange(split.n_images)):
        raise RuntimeError("gallery images came back out of order")
    return F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)


def metric_names(metrics: dict[str, float]) -> dict[str, float]:
    """`image_to_text_R@1` -> `image_to_text_R1`: MLflow metric names allow no '@'."""
    return {k.replace("@", ""): v for k, v in metrics.items()}


def summary(result: RetrievalResult) -> dict[str, float]:
    """Recall@1/5/10 both ways, their mean, the median rank (MedR) of each direction, rounded down
    as VSE++ and its successors report it, and the queries with a tie at their best positive."""
    scores = metric_names(result.metrics)
    scores["mean_recall"] = float(np.mean([scores[f"{d}_R{k}"] for d in DIRECTIONS for k in DEFAULT_KS]))
    for direction, ranks, tied in zip(DIRECTIONS, (result.i2t_ranks, result.t2i_ranks), (result.i2t_tied, result.t2i_tied)):
        scores[f"{direction}_median_rank"] = float(np.floor(np.median(ranks.numpy())))
        scores[f"{direction}_tied_queries"] = float(tied)
    scores["tied_queries"] = float(result.i2t_tied + result.t2i_tied)
    return scores


def pair_recall(outputs: torch.Tensor, targets: torch.Tensor) -> RetrievalResult:
    """Recall over a set of embedded pairs (targets [N, 2] = pair index, image index); an image
    several pairs show enters the gallery once."""
    image, text, _ = unpack(outputs)
    images, text_to_image = torch.unique(targets[:, 1], return_inverse=True)
    first = torch.full((len(images),), len(targets)).scatter_reduce_(0, text_to_image, torch.arange(len(targets)), "amin")
    return retrieval_metrics(image[first], text, text_to_image)


class RetrievalObjective:
    """Blockwise symmetric InfoNCE (blocks of the training batch size) and recall on the pairs."""

    def __init__(self, module: DualEncoder, block: int):
        self.module, self.block = module, block

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return blockwise_info_nce(outputs, self.block)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return summary(pair_recall(outputs, targets))
