"""CXR-CLIP from tiny `.tar` files in kakaobrain's format: {"model", "optimizer", "scheduler", "config", ...},
with the training config pickled as an OmegaConf object and transformers-4.26 key names."""

from __future__ import annotations

import pickle
import sys
import types
import typing
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import Bottleneck, ResNet
from transformers import BertModel, SwinModel

from medvlm.data.transforms import to_model_input
from medvlm.errors import ModelError
from medvlm.zoo import create_model, zoo_entries
from tests.zoo_tiny import (assert_all_loaded, assert_preprocess_reaches_pixels, assert_tasks_run, bert_config,
                            legacy_swin, randomise, reference_bert, swin_config, uint8_images, write_bert_repo)

CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"
SWIN = "microsoft/swin-tiny-patch4-window7-224"
PROMPTS = [["No pneumonia"], ["pneumonia"]]
CAPTIONS = ["no finding.", "left lung mass", "chest x-ray showing pneumonia", "right effusion"]


def omegaconf_standins() -> dict[str, types.ModuleType]:
    """Modules named like omegaconf's, so the pickle holds the same GLOBALs a real DictConfig writes."""
    @dataclass
    class ContainerMetadata:
        ref_type: typing.Any = typing.Any
        object_type: typing.Any = dict
        optional: bool = True
        key: typing.Any = None
        flags: dict | None = None

    class AnyNode:
        def __init__(self, value):
            self._val = value

    class DictConfig:
        def __init__(self, content: dict):
            self.__dict__["_metadata"] = ContainerMetadata()
            self.__dict__["_parent"] = None
            self.__dict__["_content"] = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v) for k, v in content.items()}

        def __getstate__(self):
            return dict(self.__dict__)

        def __setstate__(self, state):
            self.__dict__.update(state)

    modules = {name: types.ModuleType(name) for name in ("omegaconf", "omegaconf.base", "omegaconf.nodes",
                                                        "omegaconf.dictconfig")}
    for module, cls in (("omegaconf.base", ContainerMetadata), ("omegaconf.nodes", AnyNode),
                        ("omegaconf.dictconfig", DictConfig)):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    return modules


def image_part(architecture: str) -> tuple[dict, dict]:
    """(checkpoint entries under image_encoder., reference state for an independent encoder)."""
    if architecture == "resnet50":
        resnet = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8)
        del resnet.fc
        state = randomise(resnet, seed=3)
        return {f"image_encoder.resnet.{k}": v for k, v in state.items()}, state
    saved, state = legacy_swin()
    return {f"image_encoder.image_encoder.{k}": v for k, v in saved.items()}, state


@pytest.fixture(scope="module", params=["cxr-clip", "cxr-clip-swint"])
def weights(request, tmp_path_factory):
    name = request.param
    entry = zoo_entries()[name]
    root = tmp_path_factory.mktemp("weights")
    write_bert_repo(root / CLINICAL_BERT, max_positions=300)
    swin_config().save_pretrained(str(root / SWIN))
    image_state, image_reference = image_part(entry.architecture)
    bert = {f"text_encoder.text_encoder.{k}": v for k, v in randomise(BertModel(bert_config(300)), seed=4).items()}
    bert["text_encoder.text_encoder.embeddings.position_ids"] = torch.arange(300)[None]
    image_dim = 2048 if entry.architecture == "resnet50" else 16
    gen = torch.Generator().manual_seed(5)
    heads = {"image_projection.projection.weight": torch.randn(12, image_dim, generator=gen),
             "image_projection.projection.bias": torch.randn(12, generator=gen),
             "text_projection.projection.weight": torch.randn(12, 32, generator=gen),
             "text_projection.projection.bias": torch.randn(12, generator=gen),
             "logit_scale": torch.tensor(2.5)}
    model_state = {**image_state, **bert, **heads}
    modules = omegaconf_standins()
    with mock.patch.dict(sys.modules, modules):
        config = modules["omegaconf.dictconfig"].DictConfig(
            {"model": {"image_encoder": {"name": "resnet" if entry.architecture == "resnet50" else SWIN}},
             "base": {"image_size": 224, "text_max_length": 256}})
        (root / name).mkdir()
        torch.save({"model": model_state, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": []}]},
                    "scheduler": {"last_epoch": 9, "_step_count": 10}, "config": config, "epoch": 10,
                    "train_loss": 1.25}, root / name / entry.checkpoint)
    return name, root, model_state, image_reference


@pytest.fixture
def model(weights, monkeypatch):
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(weights[1]))
    return create_model(weights[0])


def test_the_tar_needs_the_safe_path_and_loads_every_tensor(weights, model):
    name, root, state, _ = weights
    path = root / name / zoo_entries()[name].checkpoint
    with pytest.raises(pickle.UnpicklingError):  # the OmegaConf config is not a plain tensor container
        torch.load(path, weights_only=True)
    assert "omegaconf" not in sys.modules  # loading never imported (or needed) the config's classes
    assert_all_loaded(model.net, state, dropped={k for k in state if ".pooler." in k})


def test_image_embedding_is_the_authors_global_feature_projected(weights, model):
    name, _, state, reference_state = weights
    pixels = to_model_input(uint8_images(2), model.preprocess)
    if zoo_entries()[name].architecture == "resnet50":
        reference = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8)
        reference.fc = torch.nn.Identity()  # torchvision's forward up to the pooled 2048-d feature
    else:
        reference = SwinModel(swin_config())
    reference.load_state_dict(reference_state)
    with torch.no_grad():
        feature = reference.eval()(pixels)
        feature = feature if isinstance(feature, torch.Tensor) else feature.last_hidden_state[:, 0]
        expected = F.linear(feature, state["image_projection.projection.weight"], state["image_projection.projection.bias"])
        torch.testing.assert_close(model.encode_image(pixels), expected)


def test_text_embedding_is_the_eos_state_projected(weights, model):
    state = weights[2]
    bert = reference_bert(state, "text_encoder.text_encoder.", 300)
    text = model.tokenize(CAPTIONS)
    assert text.input_ids.shape[1] == 256
    with torch.no_grad():
        hidden = bert(input_ids=text.input_ids, attention_mask=text.attention_mask.long()).last_hidden_state
        eos = text.attention_mask.sum(-1) - 1
        assert (text.input_ids[torch.arange(4), eos] == 3).all()  # [SEP]
        expected = F.linear(hidden[torch.arange(4), eos], state["text_projection.projection.weight"],
                            state["text_projection.projection.bias"])
        torch.testing.assert_close(model.encode_text(text), expected)
    assert torch.isclose(model.logit_scale(), torch.tensor(2.5).exp())


def test_preprocess_and_tasks(weights, model):
    entry = zoo_entries()[weights[0]]
    assert_preprocess_reaches_pixels(model, 224, tuple(entry.mean), tuple(entry.std))
    assert model.preprocess.interpolation == "bilinear"
    assert_tasks_run(model, PROMPTS, CAPTIONS)


def test_a_checkpoint_of_the_other_architecture_is_refused(weights, monkeypatch, tmp_path):
    name, root, _, _ = weights
    other = "cxr-clip-swint" if name == "cxr-clip" else "cxr-clip"
    (tmp_path / other).mkdir()
    (tmp_path / other / zoo_entries()[other].checkpoint).symlink_to(root / name / zoo_entries()[name].checkpoint)
    for repo in (CLINICAL_BERT, SWIN):
        (tmp_path / repo).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / repo).symlink_to(root / repo)
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    with pytest.raises(ModelError, match="image encoder, the zoo entry expects"):
        create_model(other)
