"""Tiny checkpoints in the zoo models' real on-disk formats, and the checks every zoo test runs.

Formats keep the real file names, key names and nesting; only sizes shrink. Every tensor is
random (LayerNorm weights too), so a parameter equal to a checkpoint tensor can only have
come from that tensor: `assert_all_loaded` matches them by value, with no key mapping of
its own to get wrong.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medvlm.data.transforms import to_model_input
from medvlm.metrics import retrieval_metrics
from medvlm.tasks.classification import LinearHead, zero_shot_head
from medvlm.zoo import create_model
from medvlm.zoo.base import ClipModel, TextBatch

WORDS = ["a", "an", "photo", "image", "of", "the", "chest", "x", "-", "ray", "breast", "ultrasound", "normal",
         "benign", "malignant", "tumor", "lesion", "no", "finding", "pneumonia", "showing", "or", ".", "ct",
         "scan", "tissue", "cells", "patch", "with", "and", "left", "right", "lung", "effusion", "mass"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def randomise(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with every floating tensor drawn at random (unique values), integer buffers kept."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.2).to(v.dtype) if v.is_floating_point() else v.clone()
             for k, v in module.state_dict().items()}
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = state[key].abs() + 0.5  # BatchNorm variances must stay positive
    return state


def write_bert_tokenizer(folder: Path, lowercase: bool = True) -> Path:
    """A WordPiece vocabulary (PubMedBERT's special-token order) saved as a BertTokenizerFast folder."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = BERT_SPECIALS + WORDS + list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=lowercase).save_pretrained(str(folder))
    return folder


def bert_config(max_positions: int = 80, layers: int = 2):
    from transformers import BertConfig

    vocab = len(dict.fromkeys(BERT_SPECIALS + WORDS + list(string.ascii_lowercase)
                              + [f"##{c}" for c in string.ascii_lowercase]))
    return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=0)


def reference_bert(state: dict[str, torch.Tensor], prefix: str, max_positions: int, layers: int = 2, **kwargs):
    """An independent BertModel (eval mode) holding the checkpoint's text tower: its tensors under `prefix`
    (the persistent `position_ids` of older transformers left out), to check a zoo model's text path against."""
    from transformers import BertModel

    bert = BertModel(bert_config(max_positions, layers), **kwargs).eval()
    bert.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                          if k.startswith(prefix) and not k.endswith("position_ids")})
    return bert


def write_bert_repo(folder: Path, max_positions: int = 80, layers: int = 2) -> Path:
    """A Hub BERT repository mirror: config.json plus tokenizer files (weights come from the CLIP checkpoint)."""
    write_bert_tokenizer(folder)
    bert_config(max_positions, layers).save_pretrained(str(folder))
    return folder


def write_clip_bpe_tokenizer(folder: Path) -> None:
    """A character-level CLIP BPE tokenizer (vocab.json + merges.txt), saved as transformers saves it."""
    from transformers import CLIPTokenizer

    chars = sorted(set(string.ascii_lowercase + string.digits + ".,-'"))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(str(folder))


def zoo_model_fixture(name: str, weights: str = "weights"):
    """A zoo test module's model fixture: entry `name` created offline from the tiny weights folder that
    the module's `weights` fixture returns first."""

    @pytest.fixture
    def model(request, monkeypatch) -> ClipModel:
        monkeypatch.setenv("MEDVLM_WEIGHTS", str(request.getfixturevalue(weights)[0]))
        return create_model(name)

    return model


def state_of(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_all_loaded(net: torch.nn.Module, checkpoint: dict[str, torch.Tensor], dropped: set[str]) -> None:
    """Every parameter/buffer of `net` equals a distinct checkpoint tensor, and every checkpoint
    tensor not in `dropped` is used: strict loading, with no tensor left at random init."""
    pool: dict[tuple, list[str]] = {}
    for key, value in checkpoint.items():
        pool.setdefault((tuple(value.shape), str(value.dtype)), []).append(key)
    used = set()
    for name, value in net.state_dict().items():
        if not value.is_floating_point():
            continue
        candidates = pool.get((tuple(value.shape), str(value.dtype)), [])
        match = next((k for k in candidates if k not in used and torch.equal(checkpoint[k], value)), None)
        assert match is not None, f"{name} equals no checkpoint tensor (left at initialisation?)"
        used.add(match)
    unused = {k for k, v in checkpoint.items() if v.is_floating_point()} - used - dropped
    assert not unused, f"checkpoint tensors not loaded: {sorted(unused)[:8]}"


def uint8_images(n: int = 4, size: int = 28, channels: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)


def assert_preprocess_reaches_pixels(model: ClipModel, size: int, mean: tuple, std: tuple, channels: int = 3) -> None:
    """A constant grey image must become exactly (v/255 - mean)/std per channel at the model's size."""
    pre = model.preprocess
    assert (pre.image_size, pre.channels) == (size, channels)
    assert torch.allclose(torch.tensor(pre.mean), torch.tensor(mean)) and torch.allclose(torch.tensor(pre.std), torch.tensor(std))
    grey = torch.full((1, 1, 20, 20), 200, dtype=torch.uint8)
    pixels = to_model_input(grey, pre)
    assert pixels.shape == (1, channels, size, size)
    expected = (200 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(pixels.mean(dim=(2, 3))[0], expected.expand(channels), atol=1e-5)


def assert_tasks_run(model: ClipModel, class_prompts: list[list[str]], captions: list[str]) -> None:
    """Zero-shot classification, retrieval and the VQA token grids run and are well-formed; strategies find their modules."""
    images = uint8_images(len(captions))
    with torch.no_grad():
        pixels = to_model_input(images, model.preprocess)
        image_emb = model.encode_image(pixels)
        head = LinearHead(model.embed_dim, len(class_prompts))
        head.set_zero_shot(zero_shot_head(model, class_prompts, [p[0] for p in class_prompts], "multiclass"))
        probs = head(image_emb).softmax(-1)
        text_emb = model.encode_text(model.tokenize(captions))
        result = retrieval_metrics(F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1),
                                   torch.arange(len(captions)))
        grid = model.image_tokens(pixels)
        tokens = model.tokenize(captions)
        states, mask = model.text_tokens(tokens)
        n = int(tokens.attention_mask.sum(dim=1).max())
        short, _ = model.text_tokens(TextBatch(tokens.input_ids[:, :n], tokens.attention_mask[:, :n]))
    assert image_emb.shape == (len(captions), model.embed_dim) and text_emb.shape == image_emb.shape
    assert torch.allclose(probs.sum(-1), torch.ones(len(captions))) and torch.isfinite(probs).all()
    assert 0.0 <= result.metrics["image_to_text_R@1"] <= 1.0
    assert grid.ndim == 3 and grid.shape[0] == len(captions) and grid.shape[1] > 1 and torch.isfinite(grid).all()
    assert states.shape[:2] == mask.shape and mask.dtype == torch.bool and mask.any(dim=1).all()
    real = mask[:, :n]  # ids cut after the longest text must give the real tokens their full-context states
    torch.testing.assert_close(short[real], states[:, :n][real], rtol=1e-4, atol=1e-5)
    assert_strategy_targets(model)


# transformers 5 Swin names -> the names transformers 4.x saved (the CXR-CLIP and MedCLIP releases)
SWIN_4X = [("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
           ("attention.v_proj", "attention.self.value"), ("attention.o_proj", "attention.output.dense"),
           ("attention.relative_position_bias.", "attention.self."), ("mlp.fc1", "intermediate.dense"),
           ("mlp.fc2", "output.dense")]


def swin_config():
    from transformers import SwinConfig

    return SwinConfig(image_size=224, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=7)


def legacy_swin(seed: int = 3) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(a tiny Swin's weights under transformers-4.x key names incl. its persistent relative_position_index
    buffers, the same weights under today's names for an independent reference model)."""
    from transformers import SwinModel

    swin = SwinModel(swin_config())
    state = randomise(swin, seed=seed)
    indices = {k: v.clone() for k, v in swin.named_buffers() if k.endswith("relative_position_index")}
    saved = {}
    for key, value in {**state, **indices}.items():
        for new, old in SWIN_4X:
            key = key.replace(new, old)
        saved[key] = value
    return saved, state


def assert_strategy_targets(model: ClipModel) -> None:
    """The entry's `partial` names real parameters and its LoRA suffixes hit Linear layers only, in each tower."""
    import re

    from medvlm.strategies import get_strategy
    from medvlm.strategies.lora import lora_target_regex

    get_strategy("partial").prepare(model, None)
    assert any(p.requires_grad for p in model.parameters())
    for prefix, suffixes in ((model.spec.vision_prefix, model.spec.lora_vision),
                             (model.spec.text_prefix, model.spec.lora_text)):
        if not suffixes:
            continue
        pattern = lora_target_regex([prefix], suffixes)
        hits = [m for name, m in model.net.named_modules() if re.fullmatch(pattern, name)]
        assert hits and all(isinstance(m, torch.nn.Linear) for m in hits), (prefix, suffixes)
