"""Contrastive retrieval pieces: InfoNCE against open_clip's ClipLoss and by hand, the packed two-tower
output, pair-indexed token lookup, gallery embedding, and recall through our pipeline against
LAION CLIP_benchmark."""

from __future__ import annotations

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_retrieval
from torch.utils.data import DataLoader

from medvlm.data.captions import load_captions
from medvlm.data.transforms import to_model_input
from medvlm.config import build_config
from medvlm.experiments.retrieval import apply_train_fraction
from medvlm.metrics.retrieval import RetrievalResult, retrieval_metrics
from medvlm.tasks.retrieval import (
    MAX_LOGIT_SCALE,
    DualEncoder,
    RetrievalObjective,
    TokenizedPairs,
    blockwise_info_nce,
    embed_gallery,
    info_nce,
    pair_recall,
    summary,
    unpack,
)
from medvlm.zoo import create_model
from tests.retrieval_fixtures import caption, jpeg, write_caption_parquet, write_roco


@pytest.fixture(scope="module")
def clip(tiny_model_dir):
    return create_model(f"local-dir:{tiny_model_dir}").eval()


def _unit(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_is_open_clips_clip_loss_for_distinct_images():
    image, text, scale = _unit(6), _unit(6, seed=1), torch.tensor(14.3)
    expected = open_clip.loss.ClipLoss()(image, text, scale)
    assert torch.allclose(info_nce(image, text, scale), expected, atol=1e-6)


def test_info_nce_with_a_shared_image_equals_counting_both_captions_as_positives():
    """Pairs 0 and 1 show one image: the diagonal loss equals, by hand, the loss whose targets give
    each of the two captions half the mass, and so do the gradients reaching the image and the texts
    (so multi-caption batches need no special case)."""
    image, text, scale = _unit(3), _unit(3, seed=1), 10.0
    image[1] = image[0]
    logits = (scale * image @ text.T).double().numpy()
    target = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])

    def ce(rows: np.ndarray) -> float:
        log_softmax = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
        return float(-(target * log_softmax).sum(axis=1).mean())

    expected = (ce(logits) + ce(logits.T)) / 2
    got = info_nce(image, text, torch.tensor(scale))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    soft = torch.tensor(target, dtype=torch.float32)
    grads = []
    for loss_of in (info_nce, lambda *args: _soft_info_nce(*args, soft)):
        distinct = image[1:].clone().requires_grad_(True)  # rows 0 and 1 come from one image: one leaf
        words = text.clone().requires_grad_(True)
        loss_of(distinct[[0, 0, 1]], words, torch.tensor(scale)).backward()
        grads.append(torch.cat([distinct.grad, words.grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _soft_info_nce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = scale * image @ text.T
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T)) / 2


def test_blockwise_info_nce_uses_nearly_equal_consecutive_blocks():
    image, text, ids = _unit(10), _unit(10, seed=2), torch.arange(10)
    scale = torch.tensor(20.0)
    outputs = torch.cat([image, text, scale.expand(10, 1)], dim=1)
    blocks = [(0, 4), (4, 7), (7, 10)]  # ceil(10 / 4) = 3 blocks of 4, 3, 3
    expected = sum(info_nce(image[a:b], text[a:b], scale) * (b - a) for a, b in blocks) / 10
    assert torch.allclose(blockwise_info_nce(outputs, block=4), expected, atol=1e-6)
    assert torch.allclose(blockwise_info_nce(outputs, block=10), info_nce(image, text, scale), atol=1e-6)
    assert torch.allclose(RetrievalObjective(None, 4).loss(outputs, torch.stack([ids, ids], 1)), expected, atol=1e-6)


def test_dual_encoder_packs_both_towers_and_the_capped_scale(clip):
    images = torch.randint(0, 256, (3, 1, 20, 24), dtype=torch.uint8)
    tokens = clip.tokenize(["axial ct", "liver lesion", "chest x ray"])
    encoder = DualEncoder(clip)
    with torch.no_grad():
        clip.net.logit_scale.fill_(np.log(200.0))  # above CLIP's cap
        out = encoder({"images": images, "input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask})
        image, text, scale = unpack(out)
        assert out.shape == (3, 2 * clip.embed_dim + 1)
        assert torch.allclose(image, F.normalize(clip.encode_image(to_model_input(images, clip.preprocess)), dim=-1))
        assert torch.allclose(text, F.normalize(clip.encode_text(tokens), dim=-1))
        assert scale.item() == MAX_LOGIT_SCALE
        clip.net.logit_scale.fill_(np.log(1 / 0.07))
    out = encoder({"images": images, "input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask})
    image, text, scale = unpack(out)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    info_nce(image, text, scale).backward()
    assert clip.net.logit_scale.grad is not None and clip.net.logit_scale.grad.abs().item() > 0
    clip.zero_grad(set_to_none=True)


def test_tokenized_pairs_look_up_each_captions_tokens_by_pair_index(tmp_path, clip):
    test = load_captions(str(write_caption_parquet(tmp_path / "hf")), data_root=tmp_path, splits=("test",)).splits["test"]
    tokens = clip.tokenize(test.captions)
    pairs = TokenizedPairs(test.pairs(32), tokens)
    order = [6, 0, 3, 5]
    inputs, targets = pairs.__getitems__(order)
    assert targets[:, 0].tolist() == order and targets[:, 1].tolist() == test.text_to_image[order].tolist()
    assert targets[0, 1] == 0  # the extra caption of image 0
    assert torch.equal(inputs["input_ids"], clip.tokenize([test.captions[j] for j in order]).input_ids)
    assert torch.equal(inputs["images"][0], inputs["images"][1])


def test_embed_gallery_embeds_each_image_and_caption_once_in_order(tmp_path, clip, monkeypatch):
    monkeypatch.setenv("MEDVLM_CACHE", str(tmp_path / "cache"))
    test = load_captions(str(write_caption_parquet(tmp_path / "hf")), data_root=tmp_path, splits=("test",)).splits["test"]
    tokens = clip.tokenize(test.captions)
    encoder = DualEncoder(clip)
    image_emb, text_emb = embed_gallery(encoder, test, tokens, batch_size=4, device=torch.device("cpu"))
    gallery, _ = test.images(clip.preprocess.image_size).__getitems__(list(range(test.n_images)))
    with torch.no_grad():
        assert torch.allclose(image_emb, torch.cat([encoder.embed_images(g[None]) for g in gallery]), atol=1e-5)
        assert torch.allclose(text_emb, torch.cat([encoder.embed_texts(tokens[j:j + 1]) for j in range(len(tokens))]),
                              atol=1e-5)
    assert image_emb.shape == (test.n_images, clip.embed_dim) and text_emb.shape == (len(test.captions), clip.embed_dim)
    cached, _ = embed_gallery(encoder, test, tokens, batch_size=4, device=torch.device("cpu"), cache=True)
    assert torch.equal(cached, image_emb) and len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_pair_recall_enters_a_shared_image_once():
    image, text = _unit(4), _unit(5, seed=3)
    image_of_pair = torch.tensor([0, 1, 1, 2, 3])
    outputs = torch.cat([image[image_of_pair], text, torch.ones(5, 1)], dim=1)
    got = pair_recall(outputs, torch.stack([torch.arange(5), image_of_pair], dim=1))
    expected = retrieval_metrics(image, text, image_of_pair)
    assert got.metrics == expected.metrics and len(got.i2t_ranks) == 4


def test_summary_names_mean_recall_and_median_rank_by_hand():
    i2t, t2i = torch.tensor([1, 4, 3, 8]), torch.tensor([1, 1, 3])
    metrics = {f"{d}_R@{k}": float((r <= k).float().mean()) for d, r in (("image_to_text", i2t), ("text_to_image", t2i))
               for k in (1, 5, 10)}
    got = summary(RetrievalResult(metrics, i2t, t2i))
    assert got["image_to_text_R1"] == 0.25 and got["image_to_text_R5"] == 0.75
    assert got["text_to_image_R1"] == pytest.approx(2 / 3)
    assert got["mean_recall"] == pytest.approx((0.25 + 0.75 + 1 + 2 / 3 + 1 + 1) / 6)
    assert got["image_to_text_median_rank"] == 3 and got["text_to_image_median_rank"] == 1  # median 3.5 rounds down
    assert not any("@" in k for k in got)  # MLflow metric names allow no '@'


def test_train_fraction_keeps_whole_images_and_the_subset_share(tmp_path):
    root = write_roco(tmp_path / "roco")
    data = load_captions(str(root), data_root=tmp_path)
    before = data.splits["train"]
    pairs_before = dict(zip(before.captions, (before.image_names[i] for i in before.text_to_image)))
    cfg = build_config({"model": "m", "dataset": "d", "train_fraction": 0.3, "subsample_seed": 5})
    after = apply_train_fraction(data, cfg).splits["train"]
    assert after.n_images == 6 and sorted(after.image_subsets) == ["non-radiology"] * 3 + ["radiology"] * 3
    assert len(after.captions) == 6 and set(after.image_names) <= set(before.image_names)
    assert all(pairs_before[c] == after.image_names[i] for c, i in zip(after.captions, after.text_to_image.tolist()))
    assert data.splits["val"].n_images == 8  # subsample_val is off


def _gallery_table(folder, n_images: int = 30, seed: int = 0):
    """A parquet of 30 images with one or two (distinct) captions each."""
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    for i in range(n_images):
        data = jpeg(rng, (40, 36))
        for _ in range(1 + i % 2):
            text = caption(rng)
            while text in seen:
                text = caption(rng)
            seen.add(text)
            rows.append({"image": {"bytes": data, "path": f"{i}.jpg"}, "caption": text, "split": "test"})
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "gallery.parquet")
    return folder / "gallery.parquet"


def test_recall_through_our_pipeline_equals_clip_benchmark(tmp_path, clip):
    test = load_captions(str(_gallery_table(tmp_path / "g")), data_root=tmp_path, splits=("test",)).splits["test"]
    tokens = clip.tokenize(test.captions)
    image_emb, text_emb = embed_gallery(DualEncoder(clip), test, tokens, batch_size=8, device=torch.device("cpu"))
    ours = retrieval_metrics(image_emb, text_emb, test.text_to_image).metrics

    gallery, _ = test.images(clip.preprocess.image_size).__getitems__(list(range(test.n_images)))
    pixels = to_model_input(gallery, clip.preprocess)
    per_image = [(pixels[i], [c for c, m in zip(test.captions, test.text_to_image.tolist()) if m == i])
                 for i in range(test.n_images)]
    loader = DataLoader(per_image, batch_size=8, collate_fn=lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b]))
    theirs = zeroshot_retrieval.evaluate(clip.net, loader, lambda texts: clip.tokenize(texts).input_ids, "cpu",
                                         amp=False, recall_k_list=[1, 5, 10])

    scores = text_emb @ image_emb.T  # precondition: no near-tie where float order could flip a rank
    positive = test.text_to_image[:, None] == torch.arange(test.n_images)[None, :]
    for s, p in ((scores, positive), (scores.T, positive.T)):
        best = s.masked_fill(~p, -torch.inf).amax(dim=1, keepdim=True)
        assert (s - best).abs()[~p].min() > 1e-5
    for k in (1, 5, 10):  # CLIP_benchmark's "text_retrieval" is image->text
        assert np.float32(ours[f"image_to_text_R@{k}"]) == theirs[f"text_retrieval_recall@{k}"]
        assert np.float32(ours[f"text_to_image_R@{k}"]) == theirs[f"image_retrieval_recall@{k}"]
    assert len(test.captions) == 45 and 0 < ours["text_to_image_R@10"] < 1
