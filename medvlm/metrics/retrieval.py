"""Image-text retrieval recall@k, computed in query chunks so memory stays bounded.

A test gallery can hold 50k-80k+ items; a full N x N score matrix would not fit, so each
chunk of queries is scored against the whole gallery, reduced to one rank per query and
discarded. Positives are matched by pair index (`text_to_image`), never by caption text:
two identical captions on different images are different items.

Rank of a query = 1 + the number of non-positive gallery items scoring >= its best
positive. Ties are pessimistic on purpose: with a `topk`-style cut a tie is broken by
gallery order, so a collapsed model that embeds everything identically could score 100%
recall; here it scores (almost) nothing. Without ties this equals CLIP_benchmark's
"at least one positive in the top k"; with ties CLIP_benchmark's `topk` lets gallery order
decide and can count the query as a hit, so our recall can be lower. How many queries had
such a tie (a non-positive scoring exactly its best positive) is reported with the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medvlm.errors import DataError, ModelError

DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalResult:
    """Recall@k per direction plus the 1-based rank of every query (CPU int64), so callers
    can log the worst-ranked queries. i2t_ranks has one entry per image, t2i_ranks per text."""

    metrics: dict[str, float]
    i2t_ranks: torch.Tensor
    t2i_ranks: torch.Tensor
    i2t_tied: int = 0
    t2i_tied: int = 0


@torch.no_grad()
def retrieval_ranks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_pair_ids: torch.Tensor,
    gallery_pair_ids: torch.Tensor,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The ranks of `ranks_and_ties`."""
    return ranks_and_ties(query, gallery, query_pair_ids, gallery_pair_ids, chunk_size)[0]


@torch.no_grad()
def ranks_and_ties(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_pair_ids: torch.Tensor,
    gallery_pair_ids: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based rank of each query's best positive; gallery item g is a positive of query q
    iff their pair ids are equal. Scores are dot products in float32 on `query`'s device.
    A query with no positive in the gallery gets rank len(gallery) + 1 (a miss at every k).
    Also a bool per query: its best positive ties a non-positive (the tie counted against it).
    Peak extra memory is about 10 bytes x chunk_size x len(gallery) (0.8 GB for 80k items)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = query.device
    gallery = gallery.to(device, torch.float32)
    gallery_pair_ids = gallery_pair_ids.to(device)
    ranks, ties = [], []
    for start in range(0, len(query), chunk_size):
        scores = query[start : start + chunk_size].to(torch.float32) @ gallery.T
        positive = query_pair_ids[start : start + chunk_size].to(device)[:, None] == gallery_pair_ids[None, :]
        best_positive = torch.where(positive, scores, -torch.inf).amax(dim=1, keepdim=True)
        non_positive_scores = scores.masked_fill_(positive, -torch.inf)
        ranks.append(1 + (non_positive_scores >= best_positive).sum(dim=1, dtype=torch.int32).cpu())
        ties.append(((non_positive_scores == best_positive) & (best_positive > -torch.inf)).any(dim=1).cpu())
    if not ranks:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.bool)
    return torch.cat(ranks).long(), torch.cat(ties)


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> RetrievalResult:
    """Recall@k both ways for L2-normalised embeddings; `text_to_image[j]` is the index of
    caption j's image. Keys: ``image_to_text_R@k`` and ``text_to_image_R@k``.

    A query counts as a hit at k if its rank <= k, so a gallery smaller than k gives 1.0.
    """
    text_to_image = _validated(image_emb, text_emb, text_to_image)
    image_ids = torch.arange(len(image_emb), device=text_to_image.device)
    i2t, i2t_tied = ranks_and_ties(image_emb, text_emb, image_ids, text_to_image, chunk_size)
    t2i, t2i_tied = ranks_and_ties(text_emb, image_emb, text_to_image, image_ids, chunk_size)
    metrics = {}
    for direction, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in ks:
            metrics[f"{direction}_R@{k}"] = (ranks <= k).sum().item() / len(ranks)
    return RetrievalResult(metrics=metrics, i2t_ranks=i2t, t2i_ranks=t2i, i2t_tied=int(i2t_tied.sum()),
                           t2i_tied=int(t2i_tied.sum()))


def small_gallery_warning(n_images: int, n_texts: int, ks: tuple[int, ...] = DEFAULT_KS) -> str | None:
    """A warning when a gallery holds at most max(ks) candidates: every rank is then <= k, so recall@k
    is 1.0 by construction and says nothing about the model. None when every k is informative."""
    k = max(ks)
    small = [f"{n} {what}" for n, what in ((n_texts, "captions (the image-to-text gallery)"),
                                             (n_images, "images (the text-to-image gallery)")) if n <= k]
    if not small:
        return None
    return (f"the test gallery holds only {' and '.join(small)}, not more than k={k}: recall@{k} (and any k at or "
            f"above the gallery size) is 1.0 by construction; use a larger test split")


def _validated(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    """Contract checks; a caption pointing at a missing image or an image without captions
    would otherwise turn into a silently wrong rank."""
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb and text_emb must be (N, D) with the same D, got {tuple(image_emb.shape)} "
            f"and {tuple(text_emb.shape)}"
        )
    if len(image_emb) == 0 or len(text_emb) == 0:
        raise DataError("retrieval gallery is empty: the test split has no images or no captions; check the split")
    text_to_image = torch.as_tensor(text_to_image).to(torch.long)
    if text_to_image.shape != (len(text_emb),):
        raise ValueError(f"text_to_image must have shape ({len(text_emb)},), got {tuple(text_to_image.shape)}")
    if text_to_image.min() < 0 or text_to_image.max() >= len(image_emb):
        raise ValueError(f"text_to_image values must index the {len(image_emb)} images")
    uncaptioned = torch.ones(len(image_emb), dtype=torch.bool)
    uncaptioned[text_to_image.cpu()] = False
    if uncaptioned.any():
        raise DataError(
            f"{int(uncaptioned.sum())} image(s) have no caption (first: {int(uncaptioned.nonzero()[0])}); "
            "image-to-text recall is undefined for them, drop them from the retrieval split"
        )
    if not (torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all()):
        raise ModelError("embeddings contain NaN or inf; check the model weights and precision")
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not torch.allclose(emb.float().norm(dim=1), torch.ones((), device=emb.device), atol=1e-2):
            raise ValueError(f"{name} must be L2-normalised (F.normalize(x, dim=-1)) before retrieval")
    return text_to_image
