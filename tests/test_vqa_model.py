"""Token grids of the zoo backends, the BAN head's padding masking, and the answer vocabulary."""

from __future__ import annotations

import open_clip
import pytest
import torch

from medvlm.tasks.vqa import UNKNOWN, AnswerVocab, BANHead, VQAModel, vqa_loss
from medvlm.zoo import create_model
from medvlm.zoo.base import ModelSpec, Preprocess, TextBatch


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return create_model(f"local-dir:{tiny_model_dir}")


def test_open_clip_image_tokens_are_the_projected_patch_grid(tiny):
    """Reference: run the ViT by hand; its class token through ln_post and proj is the image embedding,
    and the patch tokens through the same maps are the grid (class token excluded)."""
    pixels = torch.randn(2, 3, 32, 32)
    visual = tiny.net.visual
    with torch.no_grad():
        every = visual.ln_post(visual.transformer(visual._embeds(pixels))) @ visual.proj
        grid = tiny.image_tokens(pixels)
        torch.testing.assert_close(every[:, 0], tiny.encode_image(pixels))
    assert grid.shape == (2, (32 // 8) ** 2, tiny.embed_dim)
    torch.testing.assert_close(grid, every[:, 1:])


def assert_trimmed_ids_give_the_same_states(model, text: TextBatch) -> None:
    """Callers may drop trailing padding: the kept positions must get their full-context states."""
    n = int(text.attention_mask.sum(dim=1).max())
    with torch.no_grad():
        full, _ = model.text_tokens(text)
        trimmed, mask = model.text_tokens(TextBatch(text.input_ids[:, :n], text.attention_mask[:, :n]))
    assert trimmed.shape[1] == n < full.shape[1] and mask.shape == (len(text), n)
    torch.testing.assert_close(trimmed, full[:, :n])


def test_open_clip_text_tokens_hold_the_text_embedding_at_eot(tiny):
    text = tiny.tokenize(["is there a fracture?", "which organ is shown in this image"])
    with torch.no_grad():
        states, mask = tiny.text_tokens(text)
        embedding = tiny.encode_text(text)
    eot = text.input_ids.argmax(dim=1)
    torch.testing.assert_close(states[torch.arange(2), eot], embedding)
    assert torch.equal(mask, text.attention_mask)
    assert mask.sum(dim=1).tolist() == (eot + 1).tolist()
    assert_trimmed_ids_give_the_same_states(tiny, text)


def test_non_causal_text_tower_sees_full_context_padding_even_from_trimmed_ids():
    from medvlm.zoo.open_clip_model import OpenClipModel

    torch.manual_seed(0)
    net = open_clip.CLIP(embed_dim=16, vision_cfg={"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16},
                         text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1,
                                   "no_causal_mask": True}).eval()
    net.visual.preprocess_cfg = {"size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    model = OpenClipModel(net, type("Tok", (), {"context_length": 8})(), ModelSpec(name="bidi", source="test"))
    ids = torch.tensor([[47, 5, 6, 49, 0, 0, 0, 0], [47, 5, 6, 7, 8, 49, 0, 0]])
    text = TextBatch(ids, ids != 0)
    with torch.no_grad():
        states, _ = model.text_tokens(text)
        torch.testing.assert_close(states[torch.arange(2), ids.argmax(dim=1)], model.encode_text(text))
    assert_trimmed_ids_give_the_same_states(model, text)


def test_open_clip_resnet_tokens_are_feature_map_cells():
    net = open_clip.CLIP(embed_dim=16, vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "image_size": 64},
                         text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1}).eval()
    net.visual.preprocess_cfg = {"size": 64, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    from medvlm.zoo.open_clip_model import OpenClipModel

    tokenizer = type("Tok", (), {"context_length": 8})()
    model = OpenClipModel(net, tokenizer, ModelSpec(name="rn", source="test"))
    with torch.no_grad():
        grid = model.image_tokens(torch.randn(2, 3, 64, 64))
    assert grid.shape == (2, (64 // 32) ** 2, 16) and torch.isfinite(grid).all()


def test_open_clip_timm_tower_and_separate_text_tower_tokens_match_their_embeddings():
    """BiomedCLIP's layout: a timm ViT with a `head.proj`, and a text tower of its own (`net.text`)."""
    from medvlm.zoo.open_clip_model import OpenClipModel

    torch.manual_seed(0)
    net = open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg={"timm_model_name": "test_vit", "timm_model_pretrained": False, "image_size": 160,
                                  "timm_pool": "", "timm_proj": "linear"},
        text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1}).eval()
    net.visual.preprocess_cfg = {"size": 160, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    model = OpenClipModel(net, type("Tok", (), {"context_length": 8})(), ModelSpec(name="timm", source="test"))
    pixels = torch.randn(2, 3, 160, 160)
    ids = torch.tensor([[47, 5, 6, 49, 0, 0, 0, 0], [47, 5, 6, 7, 8, 49, 0, 0]])
    text = TextBatch(ids, ids != 0)
    with torch.no_grad():
        features = net.visual.trunk.forward_features(pixels)
        torch.testing.assert_close(net.visual.head(features[:, 0]), model.encode_image(pixels))
        torch.testing.assert_close(model.image_tokens(pixels), net.visual.head(features[:, 1:]))
        states, _ = model.text_tokens(text)
        torch.testing.assert_close(states[torch.arange(2), ids.argmax(dim=1)], model.encode_text(text))
    assert_trimmed_ids_give_the_same_states(model, text)


def test_transformers_clip_tokens_match_its_embeddings():
    from transformers import CLIPConfig, CLIPModel

    from medvlm.zoo.hf_clip_model import HFClipModel

    config = CLIPConfig(
        text_config={"vocab_size": 40, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 10, "bos_token_id": 1, "eos_token_id": 3,
                     "pad_token_id": 0},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    torch.manual_seed(0)
    model = HFClipModel(CLIPModel(config).eval(), None, ModelSpec(name="hf", source="test"),
                        Preprocess(32, (0.5,) * 3, (0.5,) * 3))
    ids = torch.tensor([[1, 5, 6, 3, 0, 0, 0, 0, 0, 0], [1, 5, 6, 7, 8, 3, 0, 0, 0, 0]])
    text = TextBatch(ids, ids != 0)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        states, mask = model.text_tokens(text)
        torch.testing.assert_close(states[torch.arange(2), torch.tensor([3, 5])], model.encode_text(text))
        grid = model.image_tokens(pixels)
        vision = model.net.vision_model(pixel_values=pixels).last_hidden_state
        cls = model.net.visual_projection(model.net.vision_model.post_layernorm(vision[:, 0]))
        torch.testing.assert_close(cls, model.encode_image(pixels))
    assert grid.shape == (2, 16, 8) and torch.equal(mask, text.attention_mask)
    assert_trimmed_ids_give_the_same_states(model, text)


def _head_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3, 5, 16, generator=g)
    q = torch.randn(3, 4, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return v, q, mask


def test_ban_output_ignores_padding_length_and_content():
    torch.manual_seed(0)
    head = BANHead(16, 12, n_answers=7, hidden=8, glimpses=3).eval()
    v, q, mask = _head_inputs()
    reference = head(v, q, mask)
    for extra, fill in ((0, 1e6), (6, 1e6), (6, float("nan")), (20, -3.0)):
        longer = torch.cat([q, torch.zeros(3, extra, 12)], dim=1)
        longer_mask = torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], dim=1)
        longer[~longer_mask] = fill
        torch.testing.assert_close(head(v, longer, longer_mask), reference)
    assert not torch.allclose(head(v, q, torch.ones_like(mask)), reference)


def test_ban_attention_gives_padded_tokens_exactly_zero_weight():
    torch.manual_seed(1)
    head = BANHead(16, 12, n_answers=7, hidden=8, glimpses=2).eval()
    v, q, mask = _head_inputs(1)
    maps = head.attention_maps(v, q, mask)
    assert maps.shape == (3, 2, 5, 4)
    padded = (~mask)[:, None, None, :].expand_as(maps)
    assert torch.all(maps[padded] == 0)
    assert torch.all(maps[~padded] > 0)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, 2))


def test_vqa_model_output_does_not_depend_on_the_batchs_padding(tiny):
    """A short question alone (cut to its own length) and next to a long one (cut longer) answers the same."""
    torch.manual_seed(0)
    model = VQAModel(tiny, BANHead(tiny.embed_dim, tiny.embed_dim, n_answers=5, hidden=8)).eval()
    text = tiny.tokenize(["is it normal?", "which part of the abdomen shows the largest hypodense lesion here"])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        both = model({"images": images, "input_ids": text.input_ids, "attention_mask": text.attention_mask})
        alone = model({"images": images[:1], "input_ids": text.input_ids[:1], "attention_mask": text.attention_mask[:1]})
    torch.testing.assert_close(both[:1], alone)


def test_ban_head_learns_a_toy_task():
    """One token at a random place in the grid carries the answer as its direction: needs attention and pooling to learn."""
    torch.manual_seed(0)
    v = torch.randn(32, 6, 8) * 0.1
    answers = torch.arange(32) % 4
    v[torch.arange(32), torch.randint(0, 6, (32,)), answers] += 3.0
    q, mask = torch.randn(32, 3, 6), torch.ones(32, 3, dtype=torch.bool)
    head = BANHead(8, 6, n_answers=4, hidden=16, glimpses=2, dropout=0.0)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    targets = torch.stack([answers, torch.zeros_like(answers)], dim=1)
    first = vqa_loss(head(v, q, mask), targets).item()
    for _ in range(30):
        loss = vqa_loss(head(v, q, mask), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    assert (head.eval()(v, q, mask).argmax(dim=1) == answers).float().mean() >= 0.9


def test_answer_vocabulary_normalises_and_maps_unseen_answers_to_unknown():
    vocab = AnswerVocab.build(["Yes", "yes.", "Left Kidney", "left  kidney", "CT", "no"], [True, True, False, False, False, True])
    assert vocab.answers == [UNKNOWN, "ct", "left kidney", "no", "yes"]
    assert vocab.decode(vocab.closed) == ["no", "yes"]
    assert vocab.encode(["YES", "left kidney!", "MRI", "unknown"]).tolist() == [4, 2, 0, 0]
    assert AnswerVocab(**vocab.to_dict()) == vocab


def test_partial_vqa_counts_only_what_the_ban_head_path_reaches(tiny_model_dir):
    """`partial` marks both projections and the logit scale; VQA never uses the logit scale, so it is frozen."""
    from medvlm.config import RunConfig
    from medvlm.data.vqa import VQARows
    from medvlm.engine.trainer import count_trainable, freeze_unused
    from medvlm.strategies import get_strategy

    clip = create_model(f"local-dir:{tiny_model_dir}")
    clip = get_strategy("partial").prepare(clip, RunConfig(model="x", dataset="vqa_rad", task="vqa", strategy="partial"))
    model = VQAModel(clip, BANHead(clip.embed_dim, clip.embed_dim, n_answers=5, hidden=8))
    text = clip.tokenize(["is it normal?", "where is the lesion?"])
    rows = VQARows({"images": (torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1])),
                    "input_ids": (text.input_ids, torch.tensor([0, 1])),
                    "attention_mask": (text.attention_mask, torch.tensor([0, 1]))}, torch.zeros(2, 2, dtype=torch.long))
    marked = {n for n, p in model.named_parameters() if p.requires_grad}
    assert freeze_unused(model, rows, torch.device("cpu")) == ["clip.net.logit_scale"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == marked - {"clip.net.logit_scale"}
    assert count_trainable(model) == sum(p.numel() for n, p in model.named_parameters() if n in marked) - 1
