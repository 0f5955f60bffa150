"""The MIDL paper's classifier (no extra layer, text tower in the graph) and honest `trainable_params`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medvlm.config import RunConfig
from medvlm.data.base import ArrayImages, ClassificationData
from medvlm.data.prompts import PAPER_TEMPLATE, generic_prompts, select_prompts
from medvlm.data.transforms import to_model_input
from medvlm.engine.trainer import count_trainable, fit, make_accelerator
from medvlm.experiments.classification import ClassificationObjective, encoder_classifier
from medvlm.tasks.classification import ImageClassifier, LinearHead, PromptClassifier, zero_shot_head
from medvlm.zoo import create_model

NAMES = ["malignant", "normal or benign", "cyst"]


def tiny_data(n: int = 12, seed: int = 0) -> ClassificationData:
    rng = np.random.default_rng(seed)
    splits = {s: ArrayImages(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 3)
              for s in ("train", "val", "test")}
    return ClassificationData("tiny", "multiclass", NAMES, generic_prompts(NAMES, "breast ultrasound"), splits)


@pytest.fixture
def clip(tiny_model_dir):
    torch.manual_seed(0)
    return create_model(f"local-dir:{tiny_model_dir}")


def reference_logits(clip, images: torch.Tensor, prompts: list[list[str]]) -> torch.Tensor:
    """logit_scale * cos(image, class embedding), each class embedding its prompts' normalised mean, by hand."""
    with torch.no_grad():
        image = F.normalize(clip.encode_image(to_model_input(images, clip.preprocess)), dim=-1)
        classes = torch.stack([F.normalize(F.normalize(clip.encode_text(clip.tokenize(p)), dim=-1).mean(0), dim=0)
                               for p in prompts])
        return clip.logit_scale() * image @ classes.T


def test_logits_are_logit_scale_times_cosine_with_the_prompt_embeddings(clip):
    data = tiny_data()
    images = data.splits["test"].images[:6]
    module = PromptClassifier(clip, data.prompts, NAMES, "multiclass")
    assert not any(True for _ in module.parameters() if _ not in set(clip.parameters()))  # no extra layer
    expected = reference_logits(clip, images, data.prompts)
    torch.testing.assert_close(module(images), expected, atol=1e-5, rtol=1e-5)  # in the graph
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(images), expected, atol=1e-5, rtol=1e-5)  # cached for evaluation
        head = LinearHead(clip.embed_dim, 3)
        head.set_zero_shot(zero_shot_head(clip, data.prompts, NAMES, "multiclass"))
        torch.testing.assert_close(ImageClassifier(clip, head)(images), expected, atol=1e-5, rtol=1e-5)


def test_paper_prompt_set_is_the_single_template():
    prompts = select_prompts("paper", NAMES, generic_prompts(NAMES))
    assert prompts == [[PAPER_TEMPLATE.format(c=n)] for n in NAMES]
    assert prompts[1] == ["this is a photo of normal or benign"]
    assert select_prompts("ensemble", NAMES, generic_prompts(NAMES)) == generic_prompts(NAMES)


def one_step(module, data: ClassificationData, cfg: RunConfig) -> None:
    """One optimiser step of the real training loop: the whole train split in one batch, one epoch."""
    fit(ClassificationObjective(module, data.kind), data.splits["train"], data.splits["val"], cfg, make_accelerator(cfg))


def test_lora_text_trains_the_text_side_through_the_prompts(clip):
    data = tiny_data()
    cfg = RunConfig(model="x", dataset="tiny", strategy="lora", lora_text=True, lora_r=2, epochs=1, batch_size=64,
                    lr=1e-2, weight_decay=1e-3, optimizer="adam", precision="fp32")
    module = encoder_classifier(cfg, clip, data, data.prompts)
    text = [(n, p) for n, p in module.named_parameters() if "lora_" in n and ".transformer." in n]
    assert text and all(p.requires_grad for _, p in text)
    with torch.no_grad():
        before = module.weight_and_bias()[0].clone()
    module.train()
    loss = ClassificationObjective(module, data.kind).loss(module(data.splits["train"].images), data.splits["train"].labels)
    loss.backward()
    assert all(p.grad is not None for _, p in text)
    assert any(p.grad.abs().sum() > 0 for n, p in text if "lora_B" in n)
    module.zero_grad()
    one_step(module, data, cfg)
    with torch.no_grad():
        after = module.weight_and_bias()[0]
    assert (after - before).abs().max() > 1e-6  # the class embeddings moved


@pytest.mark.parametrize("strategy, head", [("partial", "prompt"), ("partial", "linear"), ("full", "prompt"),
                                            ("lora", "prompt"), ("lora", "linear")])
def test_trainable_params_count_exactly_what_changes_in_one_step(tiny_model_dir, strategy, head):
    torch.manual_seed(0)
    clip = create_model(f"local-dir:{tiny_model_dir}")
    data = tiny_data()
    # Adam's L2 weight decay moves every parameter that has a gradient, even LoRA's A at B = 0
    cfg = RunConfig(model="x", dataset="tiny", strategy=strategy, head=head, lora_text=True, lora_r=2, epochs=1,
                    batch_size=64, lr=1e-3, weight_decay=1e-3, optimizer="adam", precision="fp32")
    module = encoder_classifier(cfg, clip, data, data.prompts)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    counted = count_trainable(module)
    one_step(module, data, cfg)
    changed = sum(p.numel() for n, p in module.named_parameters() if not torch.equal(p, before[n]))
    assert counted == changed > 0
    text_projection = [n for n in before if n.endswith("text_projection")]
    trains_text = any(p.requires_grad for n, p in module.named_parameters() if n in text_projection)
    assert trains_text == (head == "prompt" and strategy != "lora")


def test_head_init_without_a_linear_head_is_refused_in_one_line():
    from medvlm.config import build_config
    from medvlm.errors import ConfigError

    base = {"model": "x", "dataset": "breastmnist", "strategy": "lora", "head_init": "zeroshot"}
    with pytest.raises(ConfigError, match="head_init=zeroshot starts a linear head.*pass head=linear too"):
        build_config(base)
    assert build_config({**base, "head": "linear"}).head_init == "zeroshot"
    assert build_config({**base, "strategy": "linear"}).head == "prompt"  # a linear probe is a linear head anyway
