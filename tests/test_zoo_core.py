"""Model-argument resolution, the offline mirror, tokenisation masks and truncation counting."""

from __future__ import annotations

import shutil

import pytest
import torch

from medvlm.errors import ModelError
from medvlm.zoo import create_model
from medvlm.zoo.checkpoints import weights_digest
from medvlm.zoo.factory import resolve


def test_zoo_names_resolve_to_quickgelu_openai_weights():
    entry, location = resolve("clip-vit-b32")
    assert (entry["model"], entry["pretrained"], location) == ("ViT-B-32-quickgelu", "openai", None)


def test_arch_at_tag_and_hub_and_unknown():
    assert resolve("ViT-B-16@laion2b_s34b_b88k")[0]["pretrained"] == "laion2b_s34b_b88k"
    assert resolve("hf-hub:org/model")[0]["source"] == "open_clip"
    with pytest.raises(ModelError, match="unknown model 'NotAModel@x'"):
        resolve("NotAModel@x")


def test_local_dir_without_config_names_the_fix(tmp_path):
    with pytest.raises(ModelError, match="open_clip_config.json"):
        resolve(f"local-dir:{tmp_path}")


def test_mirror_folder_is_used_offline(tmp_path, tiny_model_dir, monkeypatch):
    """A zoo name with $MEDVLM_WEIGHTS/<name>/ loads from there, pinned by the weights' sha256."""
    shutil.copytree(tiny_model_dir, tmp_path / "clip-vit-b32")
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    model = create_model("clip-vit-b32")
    assert model.spec.domain == "general" and model.spec.partial == ["visual.proj", "text_projection", "logit_scale"]
    assert model.spec.pin["sha256"] == weights_digest(tiny_model_dir)
    assert model.preprocess.image_size == 32


def test_token_mask_ends_at_end_of_text_and_truncation_is_counted(tiny_model_dir):
    model = create_model(f"local-dir:{tiny_model_dir}")
    batch = model.tokenize(["a chest x-ray!", "word " * 100])
    eot = batch.input_ids.argmax(dim=1)
    for row, end in enumerate(eot.tolist()):
        assert batch.attention_mask[row, : end + 1].all() and not batch.attention_mask[row, end + 1:].any()
    assert batch.truncated == 1
    assert batch.input_ids.shape == (2, model.spec.context_length)


def test_embeddings_depend_on_inputs(tiny_model_dir):
    model = create_model(f"local-dir:{tiny_model_dir}")
    with torch.no_grad():
        a = model.encode_image(torch.zeros(1, 3, 32, 32))
        b = model.encode_image(torch.ones(1, 3, 32, 32))
        t = model.encode_text(model.tokenize(["benign", "malignant"]))
    assert a.shape == (1, model.embed_dim) and not torch.allclose(a, b)
    assert not torch.allclose(t[0], t[1])
