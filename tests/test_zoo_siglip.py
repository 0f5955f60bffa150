"""MedSigLIP: a transformers SiglipModel save_pretrained folder, sigmoid logits with a learned bias."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medvlm.data.transforms import to_model_input
from medvlm.errors import ModelError
from medvlm.tasks.classification import LinearHead, zero_shot_head
from medvlm.zoo import create_model, zoo_entries
from tests.zoo_tiny import (WORDS, assert_all_loaded, assert_preprocess_reaches_pixels, assert_tasks_run, randomise,
                            state_of, uint8_images, zoo_model_fixture)

PROMPTS = [["malignant tumor"], ["normal or benign tissue"]]
CAPTIONS = ["a chest x-ray", "breast ultrasound of a mass", "ct scan of the lung", "no finding"]


def write_sentencepiece_like_tokenizer(folder) -> int:
    """A word-level fast tokenizer standing in for SigLIP's SentencePiece one: </s> appended, <pad> 0,
    and, like SiglipTokenizer in the original releases, no attention mask among its model inputs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<pad>", "</s>", "<unk>"] + WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_input_names=["input_ids"]).save_pretrained(str(folder))
    return len(vocab)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    root = tmp_path_factory.mktemp("weights")
    folder = root / "medsiglip"
    vocab = write_sentencepiece_like_tokenizer(folder)
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8))
    net = SiglipModel(config)
    state = randomise(net)
    state["logit_bias"] = torch.tensor([-10.0])  # SigLIP's trained bias is large and negative
    net.load_state_dict(state, strict=False)
    net.save_pretrained(str(folder))
    entry = zoo_entries()["medsiglip"]
    SiglipImageProcessor(size={"height": 32, "width": 32}, resample=2, image_mean=entry.mean,
                         image_std=entry.std).save_pretrained(str(folder))
    return root, state_of(folder / "model.safetensors")


model = zoo_model_fixture("medsiglip")


def test_loads_every_tensor_and_returns_the_bias(weights, model):
    state = weights[1]
    assert_all_loaded(model.net, state, dropped=set())
    torch.testing.assert_close(model.logit_bias(), state["logit_bias"])
    torch.testing.assert_close(model.logit_scale(), state["logit_scale"].exp())


def test_text_pools_the_last_padded_position_through_the_head(weights, model):
    state = weights[1]
    text = model.tokenize(CAPTIONS)
    assert text.input_ids.shape == (4, 64) and (text.input_ids[:, -1] == 0).all()  # padded to 64, pooled at a pad
    assert not model.pass_mask  # the release's tokenizer gives no mask, so none reaches the model
    with torch.no_grad():
        last = model.net.text_model(input_ids=text.input_ids).last_hidden_state[:, -1]
        expected = F.linear(last, state["text_model.head.weight"], state["text_model.head.bias"])
        torch.testing.assert_close(model.encode_text(text), expected)


def test_logits_are_scaled_cosine_plus_bias_as_siglip_computes_them(model):
    pixels = to_model_input(uint8_images(3), model.preprocess)
    text = model.tokenize(CAPTIONS)
    with torch.no_grad():
        reference = model.net(input_ids=text.input_ids, pixel_values=pixels).logits_per_image
        cos = F.normalize(model.encode_image(pixels), dim=-1) @ F.normalize(model.encode_text(text), dim=-1).T
    torch.testing.assert_close(model.logit_scale() * cos + model.logit_bias(), reference)


def test_binary_zero_shot_is_the_bias_free_pairwise_softmax(model):
    """softmax(s*cos) over two classes = sigmoid(s*(cos1-cos0)); per-class sigmoid(s*cos+b) is not a classifier."""
    pixels = to_model_input(uint8_images(4), model.preprocess)
    with torch.no_grad():
        image = F.normalize(model.encode_image(pixels), dim=-1)
        head = LinearHead(model.embed_dim, 2)
        head.set_zero_shot(zero_shot_head(model, PROMPTS, ["malignant tumor", "normal or benign tissue"],
                                                  "binary"))
        p1 = head(image).softmax(-1)[:, 1]
        classes = F.normalize(model.encode_text(model.tokenize([p[0] for p in PROMPTS])), dim=-1)
        cos = image @ classes.T
        s, b = model.logit_scale(), model.logit_bias()
    torch.testing.assert_close(p1, torch.sigmoid(s * (cos[:, 1] - cos[:, 0])))
    assert (torch.sigmoid(s * cos + b) < 0.5).all()  # why the biased sigmoid must not feed the 0.5 threshold


def test_multilabel_zero_shot_is_siglip_own_sigmoid(model):
    """Multi-label: each label's probability is sigmoid(s*cos + b), the model's own pairwise probability."""
    from medvlm.tasks.classification import class_embeddings

    pixels = to_model_input(uint8_images(4), model.preprocess)
    names = ["malignant tumor", "normal or benign tissue"]
    with torch.no_grad():
        image = F.normalize(model.encode_image(pixels), dim=-1)
        head = LinearHead(model.embed_dim, 2)
        head.set_zero_shot(zero_shot_head(model, PROMPTS, names, "multilabel"))
        expected = torch.sigmoid(model.logit_scale() * image @ class_embeddings(model, PROMPTS).T + model.logit_bias())
        torch.testing.assert_close(torch.sigmoid(head(image)), expected)


def test_preprocess_tasks_and_gated_message(weights, model, tmp_path, monkeypatch):
    entry = zoo_entries()["medsiglip"]
    assert_preprocess_reaches_pixels(model, 32, tuple(entry.mean), tuple(entry.std))
    assert model.preprocess.interpolation == "bilinear"
    assert_tasks_run(model, PROMPTS, CAPTIONS)
    (tmp_path / "medsiglip").mkdir()
    (tmp_path / "medsiglip" / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    with pytest.raises(ModelError, match=r"gated .*\$MEDVLM_WEIGHTS/medsiglip/"):
        create_model("medsiglip")
