"""BiomedCLIP and QuiltNet: open_clip Hub folders in their real layout, loaded offline from $MEDVLM_WEIGHTS."""

from __future__ import annotations

import json

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F

from medvlm.data.transforms import to_model_input
from medvlm.zoo import create_model, zoo_entries
from tests.zoo_tiny import (assert_all_loaded, assert_preprocess_reaches_pixels, assert_tasks_run, randomise,
                            reference_bert, uint8_images, write_bert_repo, write_bert_tokenizer, zoo_model_fixture)

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
PROMPTS = [["a breast ultrasound image of malignant tumor."], ["a breast ultrasound image of normal or benign tissue."]]
CAPTIONS = ["chest x-ray showing pneumonia", "breast ultrasound of a mass", "ct scan of the lung", "no finding"]


def biomedclip_config(text_source: str) -> dict:
    """BiomedCLIP's open_clip_config.json, shrunk: timm's test_vit stands in for vit_base_patch16_224."""
    entry = zoo_entries()["biomedclip"]
    return {
        "model_cfg": {
            "embed_dim": 24,
            "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": "linear", "image_size": 160},
            "text_cfg": {"hf_model_name": text_source, "hf_tokenizer_name": text_source, "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
        },
        "preprocess_cfg": {"mean": entry.mean, "std": entry.std},
    }


@pytest.fixture(scope="module")
def biomedclip(tmp_path_factory):
    """$MEDVLM_WEIGHTS with biomedclip/ (Hub layout: config, open_clip_pytorch_model.bin, tokenizer) and the BERT mirror."""
    root = tmp_path_factory.mktemp("weights")
    bert_dir = write_bert_repo(root / BIOMEDBERT, max_positions=512)
    folder = root / "biomedclip"
    write_bert_tokenizer(folder)
    config = biomedclip_config(BIOMEDBERT)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    build_cfg = json.loads(json.dumps(config["model_cfg"]))
    build_cfg["text_cfg"]["hf_model_name"] = str(bert_dir)
    build_cfg["text_cfg"]["hf_model_pretrained"] = False
    net = open_clip.CustomTextCLIP(**build_cfg)
    state = randomise(net)
    state["text.transformer.embeddings.position_ids"] = torch.arange(512)[None]  # as transformers<4.31 saved it
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    return root, state


biomed_model = zoo_model_fixture("biomedclip", weights="biomedclip")


def test_biomedclip_loads_every_tensor_offline(biomedclip, biomed_model):
    assert_all_loaded(biomed_model.net, biomedclip[1], dropped=set())
    assert biomed_model.spec.context_length == 256 and biomed_model.tokenize(["a"]).input_ids.shape == (1, 256)


def test_biomedclip_text_is_cls_state_through_bias_free_mlp(biomedclip, biomed_model):
    """Independent BERT + the raw proj tensors: [CLS] last hidden state -> Linear -> exact GELU -> Linear."""
    root, state = biomedclip
    bert = reference_bert(state, "text.transformer.", 512, add_pooling_layer=False)
    assert set(k for k in state if k.startswith("text.proj.")) == {"text.proj.0.weight", "text.proj.2.weight"}
    text = biomed_model.tokenize(CAPTIONS)
    assert (text.input_ids[:, 0] == 2).all() and (text.input_ids[~text.attention_mask] == 0).all()  # [CLS] ... [PAD]
    with torch.no_grad():
        hidden = bert(input_ids=text.input_ids, attention_mask=text.attention_mask.long()).last_hidden_state
        expected = F.linear(F.gelu(F.linear(hidden[:, 0], state["text.proj.0.weight"])), state["text.proj.2.weight"])
        got = biomed_model.encode_text(text)
        masked_mean = (hidden * text.attention_mask[..., None]).sum(1) / text.attention_mask.sum(1, keepdim=True)
        mean_pooled = F.linear(F.gelu(F.linear(masked_mean, state["text.proj.0.weight"])), state["text.proj.2.weight"])
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, mean_pooled, atol=1e-3)  # open_clip's default mean_pooler would be wrong


def test_biomedclip_image_is_class_token_through_head_proj(biomedclip, biomed_model):
    _, state = biomedclip
    trunk = timm.create_model("test_vit", num_classes=0).eval()
    trunk.load_state_dict({k[len("visual.trunk."):]: v for k, v in state.items() if k.startswith("visual.trunk.")})
    pixels = to_model_input(uint8_images(2), biomed_model.preprocess)
    with torch.no_grad():
        expected = F.linear(trunk.forward_features(pixels)[:, 0], state["visual.head.proj.weight"])
        torch.testing.assert_close(biomed_model.encode_image(pixels), expected)


def test_biomedclip_preprocess_and_tasks(biomed_model):
    entry = zoo_entries()["biomedclip"]
    assert_preprocess_reaches_pixels(biomed_model, 160, tuple(entry.mean), tuple(entry.std))
    assert_tasks_run(biomed_model, PROMPTS, CAPTIONS)
    assert biomed_model.image_tokens(to_model_input(uint8_images(1), biomed_model.preprocess)).shape == (1, 100, 24)


def test_biomedclip_without_bert_mirror_names_the_fix(biomedclip, tmp_path, monkeypatch):
    """Offline with the model folder but no BERT config: a one-line ModelError, not a network stack trace."""
    import shutil

    import huggingface_hub

    from medvlm.errors import ModelError

    shutil.copytree(biomedclip[0] / "biomedclip", tmp_path / "biomedclip")
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at call time; no network
    with pytest.raises(ModelError, match=r"\$MEDVLM_WEIGHTS/microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract/"):
        create_model("biomedclip")


def test_quiltnet_loads_from_its_hub_layout(tmp_path, monkeypatch):
    """QuiltNet's repo: open_clip_config.json + open_clip_pytorch_model.bin (a ViT-B-32 open_clip CLIP, shrunk)."""
    entry = zoo_entries()["quiltnet"]
    cfg = {"embed_dim": 16, "quick_gelu": False,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    folder = tmp_path / "quiltnet"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": entry.mean, "std": entry.std}}))
    state = randomise(open_clip.CLIP(**cfg))
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    model = create_model("quiltnet")
    assert_all_loaded(model.net, state, dropped=set())
    pixels = to_model_input(uint8_images(2), model.preprocess)
    with torch.no_grad():
        v = model.net.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1) + v.positional_embedding
        x = v.transformer(v.ln_pre(x))[:, 0]
        expected = F.layer_norm(x, (32,), state["visual.ln_post.weight"], state["visual.ln_post.bias"]) @ state["visual.proj"]
        torch.testing.assert_close(model.encode_image(pixels), expected)
        tokens = model.tokenize(CAPTIONS)
        eot = model.net.forward_intermediates(text=tokens.input_ids, text_indices=1, intermediates_only=True,
                                              normalize_intermediates=True)["text_intermediates"][-1]
        expected = eot[torch.arange(4), tokens.input_ids.argmax(-1)] @ state["text_projection"]
        torch.testing.assert_close(model.encode_text(tokens), expected)
    assert_preprocess_reaches_pixels(model, 32, tuple(entry.mean), tuple(entry.std))
    assert_tasks_run(model, PROMPTS, CAPTIONS)
