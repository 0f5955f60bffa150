"""Retrieval recall@k against LAION CLIP_benchmark, a hand-checked gallery and a brute-force reference."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_retrieval
from torch.utils.data import DataLoader

from medvlm.errors import DataError, ModelError
from medvlm.metrics.retrieval import retrieval_metrics, retrieval_ranks

E0, E1, E2, E3 = torch.eye(4)
H = torch.tensor([0.5, 0.5, 0.5, 0.5])  # exact unit vectors: every dot product below is exact in float32
G = torch.tensor([0.5, 0.5, 0.5, -0.5])
UNIT_VECTORS = torch.stack([E0, E1, E2, E3, H, G])


def _tiny_clip() -> open_clip.CLIP:
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=2),
    )
    return model.eval()


def _image_caption_pairs(n_images: int = 40) -> list[tuple[torch.Tensor, list[str]]]:
    """Random images with 1-3 distinct captions each (duplicates would tie, see the hand-checked tests)."""
    rng = np.random.default_rng(0)
    words = "lung liver mass nodule chest axial ct mri left right lesion normal contrast kidney".split()
    pairs, seen = [], set()
    for _ in range(n_images):
        image = torch.from_numpy(rng.normal(size=(3, 32, 32)).astype(np.float32))
        captions = [" ".join(rng.choice(words, size=6)) for _ in range(rng.integers(1, 4))]
        captions = [c for c in captions if c not in seen] or [f"{captions[0]} {len(seen)}"]
        seen.update(captions)
        pairs.append((image, captions))
    return pairs


def _min_margin(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Smallest |best positive - non-positive| score gap over all queries (rows)."""
    best = scores.masked_fill(~positive, -torch.inf).amax(dim=1, keepdim=True)
    return (scores - best).abs()[~positive].min().item()


def test_parity_with_clip_benchmark():
    model = _tiny_clip()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    loader = DataLoader(_image_caption_pairs(), batch_size=8, collate_fn=image_captions_collate_fn)
    theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])

    image_emb, text_emb, text_to_image, n_seen = [], [], [], 0
    with torch.no_grad():
        for images, captions in loader:  # the same batches, so the embeddings are bit-identical to theirs
            image_emb.append(F.normalize(model.encode_image(images), dim=-1))
            text_emb.append(F.normalize(model.encode_text(tokenizer([c for cs in captions for c in cs])), dim=-1))
            text_to_image += [n_seen + i for i, cs in enumerate(captions) for _ in cs]
            n_seen += len(images)
    image_emb, text_emb = torch.cat(image_emb), torch.cat(text_emb)
    text_to_image = torch.tensor(text_to_image)
    assert len(text_emb) > len(image_emb) == 40

    # Precondition: no near-tie with a best positive, where topk's arbitrary order and our
    # pessimistic rule may differ (and float summation order could flip the comparison).
    scores = text_emb @ image_emb.T
    positive = text_to_image[:, None] == torch.arange(40)[None, :]
    assert min(_min_margin(scores, positive), _min_margin(scores.T, positive.T)) > 1e-6

    ours = retrieval_metrics(image_emb, text_emb, text_to_image, ks=(1, 5, 10), chunk_size=7).metrics
    for k in (1, 5, 10):
        # CLIP_benchmark names by what is retrieved: "text_retrieval" is image->text.
        assert np.float32(ours[f"image_to_text_R@{k}"]) == theirs[f"text_retrieval_recall@{k}"]
        assert np.float32(ours[f"text_to_image_R@{k}"]) == theirs[f"image_retrieval_recall@{k}"]
    assert 0 < ours["text_to_image_R@1"] < ours["text_to_image_R@10"] < 1  # a non-trivial comparison
    assert 0 < ours["image_to_text_R@1"] < 1


def _hand_gallery() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 images, 6 captions. Captions 1 and 2 have identical embeddings (the same caption string)
    but belong to images 1 and 2; images 1 and 3 have two captions each."""
    images = torch.stack([E0, E1, E2, E3])
    texts = torch.stack([E0, H, H, E3, G, E1])
    text_to_image = torch.tensor([0, 1, 2, 3, 3, 1])
    return images, texts, text_to_image


def test_hand_checked_gallery():
    result = retrieval_metrics(*_hand_gallery(), ks=(1, 3, 5, 10))
    # text->image: captions 1, 2 (H) and 4 (G) tie with or trail every other image -> rank 4 (pessimistic).
    assert result.t2i_ranks.tolist() == [1, 4, 4, 1, 4, 1]
    # image->text: image 1's best caption is caption 5 (score 1); image 2's only caption scores 0.5 and
    # ties with caption 1 (same embedding, image 1's) and caption 4: rank 3, not 2 as string matching gives.
    assert result.i2t_ranks.tolist() == [1, 1, 3, 1]
    assert result.metrics == {
        "image_to_text_R@1": 0.75,
        "image_to_text_R@3": 1.0,
        "image_to_text_R@5": 1.0,
        "image_to_text_R@10": 1.0,
        "text_to_image_R@1": 0.5,
        "text_to_image_R@3": 0.5,
        "text_to_image_R@5": 1.0,  # the gallery has only 4 images: every rank <= 4 < 5
        "text_to_image_R@10": 1.0,
    }
    assert result.i2t_ranks.dtype == torch.long
    # ties with the best positive, counted against the query: image 2 (caption 1 and caption 4 score its 0.5);
    # captions 1 and 2 (H scores 0.5 against every image). Caption 4 trails, it does not tie.
    assert (result.i2t_tied, result.t2i_tied) == (1, 2)


def test_default_keys_and_gallery_smaller_than_k():
    images, texts = torch.stack([E0, E1]), torch.stack([E1, E0])  # every caption is closer to the wrong image
    result = retrieval_metrics(images, texts, torch.tensor([0, 1]))
    assert result.metrics == {
        "image_to_text_R@1": 0.0,
        "image_to_text_R@5": 1.0,
        "image_to_text_R@10": 1.0,
        "text_to_image_R@1": 0.0,
        "text_to_image_R@5": 1.0,
        "text_to_image_R@10": 1.0,
    }


def test_constant_embedding_model_does_not_score():
    """All-tie scores: a topk cut would return the first k gallery items and give some hits."""
    n = 50
    emb = F.normalize(torch.ones(n, 8), dim=-1)
    result = retrieval_metrics(emb, emb.clone(), torch.arange(n))
    assert torch.equal(result.i2t_ranks, torch.full((n,), n))
    assert all(value == 0.0 for value in result.metrics.values())
    assert result.i2t_tied == result.t2i_tied == n  # every query tied, and counted against
    # CLIP_benchmark's topk lets gallery order break the ties: it counts some of these queries as hits
    theirs = zeroshot_retrieval.recall_at_k(emb @ emb.T, torch.eye(n, dtype=torch.bool), 10)
    assert 0 < (theirs > 0).float().mean() < 1


def _brute_force_ranks(query, gallery, query_ids, gallery_ids) -> list[int]:
    """The rank definition, one pair at a time in float64."""
    q, g = query.double().numpy(), gallery.double().numpy()
    ranks = []
    for i in range(len(q)):
        scores = [float(q[i] @ g[j]) for j in range(len(g))]
        best = max(s for j, s in enumerate(scores) if gallery_ids[j] == query_ids[i])
        ranks.append(1 + sum(s >= best for j, s in enumerate(scores) if gallery_ids[j] != query_ids[i]))
    return ranks


def _tied_gallery(n_images: int = 30, n_texts: int = 55) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings drawn from 6 exact unit vectors: many exact ties, and exact float32 scores."""
    gen = torch.Generator().manual_seed(1)
    images = UNIT_VECTORS[torch.randint(0, 6, (n_images,), generator=gen)]
    texts = UNIT_VECTORS[torch.randint(0, 6, (n_texts,), generator=gen)]
    extra_captions = torch.randint(0, n_images, (n_texts - n_images,), generator=gen)
    text_to_image = torch.cat([torch.arange(n_images), extra_captions])
    return images, texts, text_to_image


def test_matches_brute_force_definition_with_ties():
    images, texts, text_to_image = _tied_gallery()
    image_ids = torch.arange(len(images))
    result = retrieval_metrics(images, texts, text_to_image)
    assert result.i2t_ranks.tolist() == _brute_force_ranks(images, texts, image_ids, text_to_image)
    assert result.t2i_ranks.tolist() == _brute_force_ranks(texts, images, text_to_image, image_ids)
    for direction, ranks in (("image_to_text", result.i2t_ranks), ("text_to_image", result.t2i_ranks)):
        for k in (1, 5, 10):
            assert result.metrics[f"{direction}_R@{k}"] == sum(r <= k for r in ranks.tolist()) / len(ranks)


def test_chunking_invariance():
    images, texts, text_to_image = _tied_gallery()
    reference = retrieval_metrics(images, texts, text_to_image, chunk_size=1)
    for chunk_size in (7, 1000):
        result = retrieval_metrics(images, texts, text_to_image, chunk_size=chunk_size)
        assert result.metrics == reference.metrics
        assert torch.equal(result.i2t_ranks, reference.i2t_ranks)
        assert torch.equal(result.t2i_ranks, reference.t2i_ranks)


def test_retrieval_ranks_query_without_positive_is_a_miss():
    query, gallery = torch.stack([E0, E1]), torch.stack([E0, E1, E2])
    ranks = retrieval_ranks(query, gallery, torch.tensor([0, 9]), torch.tensor([0, 1, 2]))
    assert ranks.tolist() == [1, 4]


def test_float64_and_float16_inputs_are_scored_in_float32():
    images, texts, text_to_image = _hand_gallery()
    expected = retrieval_metrics(images, texts, text_to_image)
    for dtype in (torch.float64, torch.float16):
        result = retrieval_metrics(images.to(dtype), texts.to(dtype), text_to_image)
        assert result.metrics == expected.metrics


@pytest.mark.parametrize(
    "images, texts, text_to_image, error, message",
    [
        (torch.eye(2), torch.eye(3)[:2], torch.tensor([0, 1]), ValueError, "same D"),
        (torch.eye(2), torch.eye(2), torch.tensor([0, 1, 1]), ValueError, r"shape \(2,\)"),
        (torch.eye(2), torch.eye(2), torch.tensor([0, 2]), ValueError, "index the 2 images"),
        (torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 0]), DataError, r"2 image\(s\) have no caption \(first: 1\)"),
        (torch.eye(2) * 3, torch.eye(2), torch.tensor([0, 1]), ValueError, "image_emb must be L2-normalised"),
        (torch.tensor([[1.0, float("nan")]]), torch.eye(2)[:1], torch.tensor([0]), ModelError, "NaN or inf"),
        (torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), DataError, "gallery is empty"),
    ],
)
def test_invalid_inputs(images, texts, text_to_image, error, message):
    with pytest.raises(error, match=message):
        retrieval_metrics(images, texts, text_to_image)


def test_a_gallery_no_larger_than_k_is_flagged():
    from medvlm.metrics.retrieval import small_gallery_warning

    assert small_gallery_warning(11, 40) is None
    warning = small_gallery_warning(10, 40)
    assert "only 10 images (the text-to-image gallery)" in warning and "captions" not in warning.split("k=10")[0]
    assert "recall@10" in warning and "1.0 by construction" in warning
