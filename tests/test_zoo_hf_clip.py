"""PubMedCLIP and PLIP: transformers CLIPModel save_pretrained folders, loaded offline from $MEDVLM_WEIGHTS."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medvlm.data.transforms import to_model_input
from medvlm.zoo import create_model, zoo_entries
from tests.zoo_tiny import (assert_all_loaded, assert_preprocess_reaches_pixels, assert_tasks_run, randomise,
                            state_of, uint8_images, write_clip_bpe_tokenizer)

PROMPTS = [["a pathology image of tumor."], ["a pathology image of normal tissue."]]
CAPTIONS = ["a photo of tumor cells", "normal tissue", "left lung mass", "no finding."]


@pytest.fixture(scope="module", params=["pubmedclip", "plip"])
def hf_clip(request, tmp_path_factory):
    """The Hub repo as save_pretrained leaves it: config.json, model.safetensors, tokenizer, preprocessor_config.json."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    name = request.param
    entry = zoo_entries()[name]
    root = tmp_path_factory.mktemp("weights")
    folder = root / name
    write_clip_bpe_tokenizer(folder)
    # eos_token_id 2 is the legacy value these 2022-23 configs carry: pool at the highest id (<|endoftext|>).
    config = CLIPConfig(
        text_config=dict(vocab_size=82, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, bos_token_id=80, eos_token_id=2, pad_token_id=81),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    net = CLIPModel(config)
    net.load_state_dict(randomise(net), strict=False)
    net.save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=entry.mean, image_std=entry.std).save_pretrained(str(folder))
    return name, root, state_of(folder / "model.safetensors")


@pytest.fixture
def model(hf_clip, monkeypatch):
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(hf_clip[1]))
    return create_model(hf_clip[0])


def test_loads_every_tensor(hf_clip, model):
    assert_all_loaded(model.net, hf_clip[2], dropped=set())
    assert model.spec.pin["sha256"] and model.spec.context_length == 77


def test_embeddings_are_the_projected_class_and_eos_states(hf_clip, model):
    state = hf_clip[2]
    pixels = to_model_input(uint8_images(2), model.preprocess)
    text = model.tokenize(CAPTIONS)
    with torch.no_grad():
        hidden = model.net.vision_model(pixel_values=pixels).last_hidden_state[:, 0]
        normed = F.layer_norm(hidden, (32,), state["vision_model.post_layernorm.weight"],
                              state["vision_model.post_layernorm.bias"])
        torch.testing.assert_close(model.encode_image(pixels), F.linear(normed, state["visual_projection.weight"]))
        states = model.net.text_model(input_ids=text.input_ids, attention_mask=text.attention_mask.long()).last_hidden_state
        eos = states[torch.arange(len(CAPTIONS)), text.input_ids.argmax(-1)]
        torch.testing.assert_close(model.encode_text(text), F.linear(eos, state["text_projection.weight"]))


def test_preprocess_and_tasks(hf_clip, model):
    entry = zoo_entries()[hf_clip[0]]
    assert_preprocess_reaches_pixels(model, 32, tuple(entry.mean), tuple(entry.std))
    assert_tasks_run(model, PROMPTS, CAPTIONS)
