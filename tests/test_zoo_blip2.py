"""BLIP-2 ITC: a transformers Blip2ForImageTextRetrieval save_pretrained folder; 32 query vectors per image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medvlm.data.transforms import to_model_input
from medvlm.zoo import zoo_entries
from tests.zoo_tiny import (assert_all_loaded, assert_preprocess_reaches_pixels, assert_tasks_run, randomise,
                            state_of, uint8_images, write_bert_tokenizer, zoo_model_fixture)

PROMPTS = [["a photo of a tumor"], ["a photo of normal tissue"]]
CAPTIONS = ["a chest x-ray", "breast ultrasound of a mass", "ct scan of the lung", "no finding"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from transformers import BlipImageProcessor, Blip2Config, Blip2ForImageTextRetrieval

    root = tmp_path_factory.mktemp("weights")
    folder = root / "blip2"
    tokenizer_dir = write_bert_tokenizer(folder)
    vocab = len((tokenizer_dir / "vocab.txt").read_text().split())
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=64,
                            use_qformer_text_input=True),
        num_query_tokens=4, image_text_hidden_size=16)
    net = Blip2ForImageTextRetrieval(config)
    net.load_state_dict(randomise(net))
    net.save_pretrained(str(folder))
    entry = zoo_entries()["blip2"]
    BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=entry.mean, image_std=entry.std,
                       resample=3).save_pretrained(str(folder))
    return root, state_of(folder / "model.safetensors")


model = zoo_model_fixture("blip2")


def test_loads_every_tensor_itm_head_only_dropped(weights, model):
    state = weights[1]
    assert_all_loaded(model.net, state, dropped={"itm_head.weight", "itm_head.bias"})


def test_itc_similarity_equals_transformers_retrieval_scores(weights, model):
    from transformers import Blip2ForImageTextRetrieval

    reference = Blip2ForImageTextRetrieval.from_pretrained(str(weights[0] / "blip2")).eval()
    pixels = to_model_input(uint8_images(3), model.preprocess)
    text = model.tokenize(CAPTIONS)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, input_ids=text.input_ids, attention_mask=text.attention_mask.long(),
                             use_image_text_matching_head=False).logits_per_image
        queries = model.query_embeddings(pixels)
        got = model.itc_similarity(queries, model.encode_text(text))
    torch.testing.assert_close(got, expected)
    assert queries.shape == (3, 4, 16)


def test_embeddings_from_the_raw_projections(weights, model):
    state = weights[1]
    pixels = to_model_input(uint8_images(2), model.preprocess)
    text = model.tokenize(CAPTIONS)
    net = model.net
    with torch.no_grad():
        cls = net.qformer(query_embeds=net.embeddings(input_ids=text.input_ids), query_length=0,
                          attention_mask=text.attention_mask.long()).last_hidden_state[:, 0]
        torch.testing.assert_close(model.encode_text(text),
                                   F.linear(cls, state["text_projection.weight"], state["text_projection.bias"]))
        features = net.vision_model(pixel_values=pixels).last_hidden_state
        out = net.qformer(query_embeds=state["query_tokens"].expand(2, -1, -1), encoder_hidden_states=features)
        projected = F.linear(out.last_hidden_state, state["vision_projection.weight"], state["vision_projection.bias"])
        torch.testing.assert_close(model.encode_image(pixels), F.normalize(projected, dim=-1).mean(dim=1))
    assert torch.isclose(model.logit_scale(), torch.tensor(1 / 0.07))


def test_preprocess_and_tasks(model):
    entry = zoo_entries()["blip2"]
    assert_preprocess_reaches_pixels(model, 32, tuple(entry.mean), tuple(entry.std))
    assert model.spec.context_length == 32 and model.tokenize(CAPTIONS).input_ids.shape == (4, 32)
    assert_tasks_run(model, PROMPTS, CAPTIONS)
