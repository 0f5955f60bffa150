"""MedCLIP-ViT from a tiny `pytorch_model.bin` in the released format (transformers-4.x keys)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel, SwinModel

from medvlm.data.transforms import to_model_input
from medvlm.zoo import zoo_entries
from tests.zoo_tiny import (assert_all_loaded, assert_preprocess_reaches_pixels, assert_tasks_run, bert_config,
                            legacy_swin, randomise, reference_bert, swin_config, uint8_images, write_bert_repo,
                            zoo_model_fixture)

CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"
SWIN = "microsoft/swin-tiny-patch4-window7-224"
PROMPTS = [["pneumonia at the left lung base"], ["no finding"]]
CAPTIONS = ["no finding.", "left lung mass with effusion and pneumonia", "chest x-ray showing pneumonia", "effusion"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    write_bert_repo(root / CLINICAL_BERT, max_positions=80, layers=3)
    swin_config().save_pretrained(str(root / SWIN))
    swin_saved, swin_state = legacy_swin()
    bert = randomise(BertModel(bert_config(80, layers=3)), seed=4)  # MedCLIP's AutoModel keeps the pooler
    bert["embeddings.position_ids"] = torch.arange(80)[None]  # persistent in transformers < 4.31
    gen = torch.Generator().manual_seed(6)
    state = {**{f"vision_model.model.{k}": v for k, v in swin_saved.items()},
             **{f"text_model.model.{k}": v for k, v in bert.items()},
             "vision_model.projection_head.weight": torch.randn(12, 16, generator=gen),
             "text_model.projection_head.weight": torch.randn(12, 32, generator=gen),
             "logit_scale": torch.tensor(5.0)}  # above MedCLIP's clamp of 4.6052
    (root / "medclip").mkdir()
    torch.save(state, root / "medclip" / "pytorch_model.bin")
    return root, state, swin_state


model = zoo_model_fixture("medclip")


def test_every_tensor_loads(weights, model):
    state = weights[1]
    assert_all_loaded(model.net, state, dropped={k for k in state if ".pooler." in k})
    assert torch.isclose(model.logit_scale(), torch.tensor(4.6052).exp())  # clamped, as MedCLIP's compute_logits


def test_image_embedding_is_the_projected_swin_pool_of_a_grey_image(weights, model):
    state, swin_state = weights[1], weights[2]
    reference = SwinModel(swin_config()).eval()
    reference.load_state_dict(swin_state)
    pixels = to_model_input(uint8_images(2, channels=1), model.preprocess)
    assert pixels.shape[1] == 1
    with torch.no_grad():
        pooled = reference(pixel_values=pixels.repeat(1, 3, 1, 1)).pooler_output
        torch.testing.assert_close(model.encode_image(pixels),
                                   F.linear(pooled, state["vision_model.projection_head.weight"]))


def test_text_embedding_is_medclip_layer_1_2_last_mean(weights, model):
    """MedCLIPTextModel's pooling on a batch padded to its longest text equals ours for that longest text."""
    state = weights[1]
    bert = reference_bert(state, "text_model.model.", 80, layers=3)
    longest = max(range(len(CAPTIONS)), key=lambda i: len(model.tokenizer(CAPTIONS[i])["input_ids"]))
    batch = model.tokenizer(CAPTIONS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        layers = torch.stack([out.hidden_states[1], out.hidden_states[2], out.hidden_states[-1]])
        authors = F.linear(layers.permute(1, 0, 2, 3).mean(2).mean(1), state["text_model.projection_head.weight"])
        ours = model.encode_text(model.tokenize(CAPTIONS))
    torch.testing.assert_close(ours[longest], authors[longest])
    shorter = [i for i in range(len(CAPTIONS)) if i != longest]
    assert not torch.allclose(ours[shorter], authors[shorter], atol=1e-4)  # MedCLIP's batch-padding artefact


def test_grayscale_preprocess_and_tasks(model):
    entry = zoo_entries()["medclip"]
    assert_preprocess_reaches_pixels(model, 224, tuple(entry.mean), tuple(entry.std), channels=1)
    assert to_model_input(uint8_images(1, channels=3), model.preprocess).shape == (1, 1, 224, 224)
    assert_tasks_run(model, PROMPTS, CAPTIONS)
