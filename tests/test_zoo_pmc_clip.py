"""PMC-CLIP from a tiny `checkpoint.pt` in the authors' format (training checkpoint, DDP `module.` keys)."""

from __future__ import annotations

import shutil

import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import Transformer
from transformers import BertModel

from medvlm.config import build_config
from medvlm.data.transforms import to_model_input
from medvlm.errors import ModelError
from medvlm.strategies import get_strategy
from medvlm.zoo import create_model, zoo_entries
from tests.zoo_tiny import (assert_all_loaded, assert_preprocess_reaches_pixels, assert_tasks_run, bert_config,
                            randomise, reference_bert, uint8_images, write_bert_repo, zoo_model_fixture)

PUBMEDBERT = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext"
PROMPTS = [["a ct scan of the lung with a mass."], ["a chest x-ray with no finding."]]
CAPTIONS = ["chest x-ray showing pneumonia", "breast ultrasound of a mass", "ct scan of the lung", "no finding"]
UNUSED = ("fusion_module.", "mlm_projection", "img_special_token", "positional_embedding", "ln_final.",
          "text_encoder.pooler.", "text_encoder.embeddings.position_ids")


def pmc_state() -> dict[str, torch.Tensor]:
    """Every key `PMC_CLIP(RN50_fusion4, mlm=True)` saves, at tiny sizes (width 8 -> 4 heads of 64, 64 px)."""
    parts = {
        "visual.": ModifiedResNet([1, 1, 1, 1], output_dim=24, heads=4, image_size=64, width=8),
        "text_encoder.": BertModel(bert_config(80)),  # AutoModel.from_pretrained keeps BERT's pooler
        "fusion_module.": Transformer(width=32, layers=1, heads=2),
    }
    state = {prefix + k: v for prefix, module in parts.items() for k, v in randomise(module).items()}
    gen = torch.Generator().manual_seed(1)
    for key, shape in {"positional_embedding": (77, 32), "ln_final.weight": (32,), "ln_final.bias": (32,),
                       "text_projection": (32, 24), "mlm_projection": (32, 87), "logit_scale": (),
                       "img_special_token": (1, 1, 24)}.items():
        state[key] = torch.randn(shape, generator=gen)
    state["text_encoder.embeddings.position_ids"] = torch.arange(80)[None]  # persistent in transformers<4.31
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    write_bert_repo(root / PUBMEDBERT, max_positions=80)
    state = pmc_state()
    (root / "pmc-clip").mkdir()
    first = next(iter(state.values()))
    torch.save({"epoch": 100, "name": "2023_02_10-pmc_clip", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros_like(first)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-6, "params": [0]}]}},
               root / "pmc-clip" / "checkpoint.pt")
    return root, state


model = zoo_model_fixture("pmc-clip")


def test_every_embedding_tensor_loads_and_only_the_mlm_branch_is_dropped(weights, model):
    state = weights[1]
    assert_all_loaded(model.net, state, dropped={k for k in state if k.startswith(UNUSED)})
    assert model.spec.pin["sha256"] and model.embed_dim == 24


def test_image_embedding_equals_the_authors_attention_pool(weights, model):
    """open_clip's ModifiedResNet (CLIP's original F.multi_head_attention_forward pool) on the raw tensors."""
    state = weights[1]
    reference = ModifiedResNet([1, 1, 1, 1], output_dim=24, heads=4, image_size=64, width=8).eval()
    reference.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
    pixels = to_model_input(uint8_images(3), model.preprocess)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), reference(pixels))


def test_text_embedding_is_unmasked_cls_state_times_projection(weights, model):
    """As the authors' encode_text: pad to 77, BERT without attention mask, row where id == [CLS] (2)."""
    state = weights[1]
    bert = reference_bert(state, "text_encoder.", 80)
    text = model.tokenize(CAPTIONS)
    assert text.input_ids.shape == (4, 77)
    with torch.no_grad():
        hidden = bert(input_ids=text.input_ids)["last_hidden_state"]
        cls_rows = torch.nonzero(text.input_ids == 2)
        expected = hidden[torch.arange(4), cls_rows[:, 1]] @ state["text_projection"]
        torch.testing.assert_close(model.encode_text(text), expected)
        masked = bert(input_ids=text.input_ids, attention_mask=text.attention_mask.long())["last_hidden_state"]
        assert not torch.allclose(masked[:, 0] @ state["text_projection"], expected, atol=1e-4)
    assert model.logit_scale() == state["logit_scale"].exp()


def test_preprocess_tasks_and_lora_reach_the_image_encoder(model):
    entry = zoo_entries()["pmc-clip"]
    assert_preprocess_reaches_pixels(model, 64, tuple(entry.mean), tuple(entry.std))
    assert_tasks_run(model, PROMPTS, CAPTIONS)
    pixels = to_model_input(uint8_images(2), model.preprocess)
    assert model.image_tokens(pixels).shape == (2, 4, 24)  # 2x2 cells of a 64 px image
    with torch.no_grad():
        before = model.encode_image(pixels)
    cfg = build_config({"model": "pmc-clip", "dataset": "breastmnist", "strategy": "lora"})
    get_strategy("lora").prepare(model, cfg)
    for name, p in model.net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    with torch.no_grad():
        assert not torch.allclose(model.encode_image(pixels), before)  # the adapters are on the live path


def test_strictness_and_missing_files(weights, tmp_path, monkeypatch):
    root, state = weights
    shutil.copytree(root / PUBMEDBERT, tmp_path / PUBMEDBERT)
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    (tmp_path / "pmc-clip").mkdir()
    with pytest.raises(ModelError, match="checkpoint.pt not found in .*pmc-clip"):
        create_model("pmc-clip")
    extra = {**state, "visual.surprise": torch.zeros(1)}
    torch.save({"state_dict": extra}, tmp_path / "pmc-clip" / "checkpoint.pt")
    with pytest.raises(ModelError, match="visual.surprise"):
        create_model("pmc-clip")
    torch.save({"state_dict": {k: v for k, v in state.items() if k != "text_encoder.encoder.layer.1.output.dense.bias"}},
               tmp_path / "pmc-clip" / "checkpoint.pt")
    with pytest.raises(ModelError, match="output.dense.bias"):
        create_model("pmc-clip")
