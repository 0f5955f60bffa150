"""LoRA strategy: the adapted forward is exactly the base model with W + (alpha/r)·B·A merged in.

The reference for every exactness test is an untouched deepcopy of the base model (open_clip's
own nn.MultiheadAttention included) whose weights are merged by hand from the raw lora_A /
lora_B tensors, so it shares no code with the module under test.
"""

from __future__ import annotations

import copy
import re

import open_clip
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import MultiheadAttention as PeftLoraMultiheadAttention
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from medvlm.errors import ConfigError, ModelError
from medvlm.strategies.lora import (
    AccumulatingLoraLinear,
    LinearMultiheadAttention,
    apply_lora,
    load_adapter,
    lora_target_regex,
    save_adapter,
    unfuse_attention,
)

WIDTH, HEADS, LAYERS, MLP_RATIO = 64, 2, 2, 4
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": LAYERS, "width": WIDTH, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": WIDTH, "heads": HEADS, "layers": LAYERS},
}
BLOCK_SUFFIXES = ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
VISION_TARGETS = lora_target_regex(["visual."], BLOCK_SUFFIXES)
R, ALPHA = 4, 8.0


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CLIP).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def texts() -> torch.Tensor:
    return torch.randint(1, 1000, (3, 16), generator=torch.Generator().manual_seed(2))


def randomize_lora_b(model: nn.Module, seed: int = 3) -> int:
    """lora_B starts at zero (adapter == identity); make it non-zero so exactness tests can fail."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                weight = module.lora_B["default"].weight
                weight.copy_(0.2 * torch.randn(weight.shape, generator=generator))
                assert weight.abs().min() > 0
                count += 1
    return count


def merge_manually(reference: nn.Module, adapted: nn.Module) -> nn.Module:
    """Add s·B·A of every LoRA Linear in `adapted` to the matching weight of `reference` (unfused, in place).

    An adapted "<x>.attn.in_proj" lives in `reference` as nn.MultiheadAttention "<x>.attn".in_proj_weight.
    """
    lora_layers = {name: m for name, m in adapted.named_modules() if isinstance(m, LoraLayer)}
    assert lora_layers
    with torch.no_grad():
        for name, layer in lora_layers.items():
            delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            if name.endswith("attn.in_proj"):
                weight = reference.get_submodule(name.removesuffix(".in_proj")).in_proj_weight
            else:
                weight = reference.get_submodule(name).weight
            assert weight.shape == delta.shape
            weight += delta
    return reference


# --- LinearMultiheadAttention is nn.MultiheadAttention ---------------------------------------------

L, S, N, E = 5, 7, 3, 16


def _mha_inputs(batch_first: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    def make(length: int) -> torch.Tensor:
        x = torch.randn(N, length, E, generator=generator)
        return x if batch_first else x.transpose(0, 1)

    return make(L), make(S)


MASK_CASES = {
    "none": lambda g: {},
    "float_causal": lambda g: {"attn_mask": torch.full((L, L), float("-inf")).triu(1)},
    "bool_2d": lambda g: {"attn_mask": torch.rand(L, L, generator=g) > 0.7},
    "float_per_head": lambda g: {"attn_mask": torch.randn(N * 2, L, L, generator=g)},
    "key_padding_bool": lambda g: {"key_padding_mask": torch.tensor([[False] * L, [False] * 3 + [True] * 2] * 2)[:N]},
    "both_masks_float": lambda g: {
        "attn_mask": torch.randn(L, L, generator=g),
        "key_padding_mask": torch.randn(N, L, generator=g),
    },
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_linear_mha_matches_torch_self_attention(batch_first: bool, need_weights: bool, case: str) -> None:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, 2, batch_first=batch_first).eval()
    nn.init.normal_(mha.in_proj_bias)
    linear = LinearMultiheadAttention.from_multihead_attention(copy.deepcopy(mha))
    x, _ = _mha_inputs(batch_first, generator)
    kwargs = MASK_CASES[case](generator)

    expected, expected_weights = mha(x, x, x, need_weights=need_weights, **kwargs)
    actual, actual_weights = linear(x, x, x, need_weights=need_weights, **kwargs)

    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(actual_weights, expected_weights, atol=1e-6, rtol=1e-5)
    else:
        assert actual_weights is None and expected_weights is None


@pytest.mark.parametrize("batch_first", [True, False])
def test_linear_mha_matches_torch_cross_attention_per_head_weights(batch_first: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    mha = nn.MultiheadAttention(E, 4, batch_first=batch_first).eval()
    linear = LinearMultiheadAttention.from_multihead_attention(copy.deepcopy(mha))
    query, memory = _mha_inputs(batch_first, generator)
    padding = torch.rand(N, S, generator=generator) > 0.8
    value = memory * 2.0

    expected = mha(query, memory, value, key_padding_mask=padding, average_attn_weights=False)
    actual = linear(query, memory, value, key_padding_mask=padding, average_attn_weights=False)

    assert actual[1].shape == (N, 4, L, S)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_linear_mha_matches_torch_unbatched_without_bias() -> None:
    generator = torch.Generator().manual_seed(0)
    mha = nn.MultiheadAttention(E, 2, bias=False).eval()
    linear = LinearMultiheadAttention.from_multihead_attention(copy.deepcopy(mha))
    x = torch.randn(L, E, generator=generator)
    padding = torch.tensor([False, False, False, True, True])

    assert linear.in_proj.bias is None and linear.out_proj.bias is None
    torch.testing.assert_close(
        linear(x, x, x, key_padding_mask=padding), mha(x, x, x, key_padding_mask=padding), atol=1e-5, rtol=1e-5
    )


def test_linear_mha_applies_attention_dropout_only_in_training() -> None:
    mha = nn.MultiheadAttention(E, 2, dropout=0.5, batch_first=True).train()
    linear = LinearMultiheadAttention.from_multihead_attention(mha)
    x = torch.randn(N, L, E)

    assert linear.training
    assert not torch.allclose(linear(x, x, x)[0], linear(x, x, x)[0])
    linear.eval()
    torch.testing.assert_close(linear(x, x, x)[0], linear(x, x, x)[0], atol=0, rtol=0)


def test_linear_mha_shares_parameters_so_gradients_reach_them() -> None:
    mha = nn.MultiheadAttention(E, 2, batch_first=True)
    linear = LinearMultiheadAttention.from_multihead_attention(mha)
    assert linear.in_proj.weight is mha.in_proj_weight and linear.out_proj.weight is mha.out_proj.weight

    x = torch.randn(N, L, E)
    linear(x, x, x, need_weights=False)[0].sum().backward()
    assert linear.in_proj.weight.grad is not None and linear.in_proj.weight.grad.abs().sum() > 0


def test_linear_mha_follows_torch_is_causal_contract() -> None:
    mha = nn.MultiheadAttention(E, 2, batch_first=True).eval()
    linear = LinearMultiheadAttention.from_multihead_attention(copy.deepcopy(mha))
    x = torch.randn(N, L, E)
    causal = nn.Transformer.generate_square_subsequent_mask(L)

    expected = mha(x, x, x, need_weights=False, attn_mask=causal, is_causal=True)[0]
    torch.testing.assert_close(linear(x, x, x, attn_mask=causal, is_causal=True)[0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="is_causal"):
        linear(x, x, x, is_causal=True)


@pytest.mark.parametrize("batch_first", [True, False])
def test_linear_mha_projects_self_attention_in_one_in_proj_call(batch_first: bool) -> None:
    linear = LinearMultiheadAttention(E, 2, batch_first=batch_first)
    calls: list[int] = []
    linear.in_proj.register_forward_hook(lambda *_: calls.append(1))
    x, memory = _mha_inputs(batch_first, torch.Generator().manual_seed(0))

    linear(x, x, x)
    assert len(calls) == 1
    linear(x, memory, memory)
    assert len(calls) == 1 + 3


def test_lora_on_cross_attention_equals_manual_merge() -> None:
    """k and v come from in_proj's output rows, not from weight slices, so the LoRA delta reaches them too."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(E, 2, batch_first=True)}).eval()
    reference = copy.deepcopy(model)
    apply_lora(model, ["attn.in_proj", "attn.out_proj"], r=R, alpha=ALPHA, dropout=0.0).eval()
    randomize_lora_b(model)
    merge_manually(reference, model)
    query, memory = _mha_inputs(True, generator)

    with torch.no_grad():
        actual = model["attn"](query, memory, memory * 2.0, need_weights=False)[0]
        expected = reference["attn"](query, memory, memory * 2.0, need_weights=False)[0]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "mha",
    [
        nn.MultiheadAttention(E, 2, kdim=8, vdim=8),
        nn.MultiheadAttention(E, 2, add_bias_kv=True),
        nn.MultiheadAttention(E, 2, add_zero_attn=True),
    ],
    ids=["kdim", "bias_kv", "zero_attn"],
)
def test_unfuse_refuses_unsupported_attention_and_leaves_model_untouched(mha: nn.MultiheadAttention) -> None:
    model = nn.ModuleDict({"good": nn.MultiheadAttention(E, 2), "bad": mha})

    with pytest.raises(ModelError, match=r"^bad: nn\.MultiheadAttention with"):
        unfuse_attention(model)
    assert isinstance(model["good"], nn.MultiheadAttention)


# --- unfusing a real open_clip model ----------------------------------------------------------------


def test_unfuse_preserves_both_clip_towers(images: torch.Tensor, texts: torch.Tensor) -> None:
    model = tiny_clip()
    with torch.no_grad():
        expected_image, expected_text = model.encode_image(images), model.encode_text(texts)

    assert unfuse_attention(model) == 2 * LAYERS
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert isinstance(model.transformer.resblocks[0].attn.in_proj, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), expected_image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(texts), expected_text, atol=1e-5, rtol=1e-5)
    assert unfuse_attention(model) == 0


def test_unfuse_replaces_a_shared_attention_once_and_keeps_it_shared() -> None:
    shared = nn.MultiheadAttention(E, 2)
    model = nn.ModuleDict({"a": shared, "b": nn.ModuleDict({"c": shared})})

    assert unfuse_attention(model) == 1
    assert model["a"] is model["b"]["c"]


# --- exactness of the adapter -----------------------------------------------------------------------


@pytest.mark.parametrize("with_text", [False, True], ids=["vision", "vision+text"])
def test_lora_forward_equals_manual_merge(images: torch.Tensor, texts: torch.Tensor, with_text: bool) -> None:
    model = tiny_clip()
    reference = copy.deepcopy(model)
    prefixes = ["visual.", "transformer."] if with_text else ["visual."]
    peft_model = apply_lora(model, lora_target_regex(prefixes, BLOCK_SUFFIXES), r=R, alpha=ALPHA, dropout=0.1)
    peft_model.eval()

    assert randomize_lora_b(model) == len(prefixes) * LAYERS * len(BLOCK_SUFFIXES)
    adapted = {name for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert any(name.startswith("transformer.") for name in adapted) == with_text
    assert all(m.scaling["default"] == ALPHA / R for m in model.modules() if isinstance(m, LoraLayer))

    with torch.no_grad():
        base_image, base_text = reference.encode_image(images), reference.encode_text(texts)
        merge_manually(reference, model)
        actual_image, actual_text = peft_model.encode_image(images), peft_model.encode_text(texts)
        assert (actual_image - base_image).abs().max() > 1e-2
        torch.testing.assert_close(actual_image, reference.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(actual_text, reference.encode_text(texts), atol=1e-5, rtol=1e-5)
        if with_text:
            assert (actual_text - base_text).abs().max() > 1e-2
        else:
            torch.testing.assert_close(actual_text, base_text, atol=1e-5, rtol=1e-5)


def test_peft_lora_on_torch_multihead_attention_applies_out_proj_update_twice(images: torch.Tensor) -> None:
    """Why we unfuse: peft 0.21's own nn.MultiheadAttention LoRA is W_out + 2·s·B·A, not W_out + s·B·A."""
    model = tiny_clip()
    reference = copy.deepcopy(model)
    peft_model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=r"visual\..*\.attn")).eval()
    randomize_lora_b(model)
    attentions = {n: m for n, m in model.named_modules() if isinstance(m, PeftLoraMultiheadAttention)}
    assert len(attentions) == LAYERS

    def merged(out_proj_factor: float) -> nn.Module:
        merged_model = copy.deepcopy(reference)
        with torch.no_grad():
            for name, lora_attn in attentions.items():
                mha, out_proj, s = merged_model.get_submodule(name), lora_attn.base_layer.out_proj, ALPHA / R
                mha.in_proj_weight += s * lora_attn.lora_B["default"].weight @ lora_attn.lora_A["default"].weight
                mha.out_proj.weight += out_proj_factor * s * out_proj.lora_B["default"].weight @ out_proj.lora_A[
                    "default"
                ].weight
        return merged_model

    with torch.no_grad():
        actual = peft_model.encode_image(images)
        assert (actual - merged(1.0).encode_image(images)).abs().max() > 1e-2
        torch.testing.assert_close(actual, merged(2.0).encode_image(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["timm", "transformers"])
def test_lora_on_plain_linear_attention_equals_manual_merge(family: str) -> None:
    """Models whose attention already uses nn.Linear (timm fused qkv, HF CLIP q/k/v_proj) need no unfusing."""
    torch.manual_seed(0)
    if family == "timm":
        import timm

        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2
        )
        targets = lora_target_regex(["blocks."], ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"])
        expected_layers = 2 * 4
    else:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8,
        )
        model = CLIPVisionModel(config)
        targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
        expected_layers = 2 * 6
    model.eval()
    reference = copy.deepcopy(model)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    peft_model = apply_lora(model, targets, r=R, alpha=ALPHA, dropout=0.0).eval()
    assert randomize_lora_b(model) == expected_layers

    def features(m: nn.Module) -> torch.Tensor:
        return m.forward_features(pixels) if family == "timm" else m(pixel_values=pixels).last_hidden_state

    with torch.no_grad():
        base = features(reference)
        actual = features(peft_model)
        assert (actual - base).abs().max() > 1e-2
        torch.testing.assert_close(actual, features(merge_manually(reference, model)), atol=1e-5, rtol=1e-5)


# --- trainable parameters, targets, persistence ----------------------------------------------------


def test_only_lora_parameters_train_and_their_count_is_r_times_in_plus_out() -> None:
    model = tiny_clip()
    peft_model = apply_lora(model, VISION_TARGETS, r=R, alpha=ALPHA, dropout=0.0)

    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    mlp = MLP_RATIO * WIDTH
    per_block = R * ((WIDTH + 3 * WIDTH) + (WIDTH + WIDTH) + (WIDTH + mlp) + (mlp + WIDTH))
    assert sum(trainable.values()) == LAYERS * per_block == 8192


def test_lora_target_regex_matches_whole_name_components_under_prefixes() -> None:
    pattern = lora_target_regex(["visual"], ["attn.in_proj", "mlp.c_fc"])
    assert re.fullmatch(pattern, "visual.transformer.resblocks.0.attn.in_proj")
    assert re.fullmatch(pattern, "visual.attn.in_proj")
    assert re.fullmatch(pattern, "visual.transformer.resblocks.11.mlp.c_fc")
    assert not re.fullmatch(pattern, "transformer.resblocks.0.attn.in_proj")
    assert not re.fullmatch(pattern, "visual.transformer.resblocks.0.xattn.in_proj")
    assert not re.fullmatch(pattern, "visualx.attn.in_proj")
    assert not re.fullmatch(pattern, "visual.transformer.resblocks.0.attn.in_proj.base_layer")
    everywhere = lora_target_regex([""], ["attn.in_proj"])
    assert re.fullmatch(everywhere, "attn.in_proj") and re.fullmatch(everywhere, "transformer.r.0.attn.in_proj")
    with pytest.raises(ConfigError):
        lora_target_regex([], ["attn.in_proj"])


def test_targets_matching_nothing_raise_model_error_with_real_names() -> None:
    with pytest.raises(ModelError, match=r"match no module of CLIP.*visual\.transformer\.resblocks\.0\.attn\.in_proj"):
        apply_lora(tiny_clip(), ["qkv"], r=R, alpha=ALPHA, dropout=0.0)


def test_targets_matching_non_linear_modules_raise_model_error() -> None:
    with pytest.raises(ModelError, match=r"non-Linear modules visual\.transformer\.resblocks\.0\.attn \("):
        apply_lora(tiny_clip(), lora_target_regex(["visual."], ["attn"]), r=R, alpha=ALPHA, dropout=0.0)


def test_save_and_load_adapter_round_trip_is_bit_exact(tmp_path, images: torch.Tensor, texts: torch.Tensor) -> None:
    model = tiny_clip(seed=7)
    peft_model = apply_lora(model, VISION_TARGETS, r=R, alpha=ALPHA, dropout=0.1).eval()
    randomize_lora_b(model)

    save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    loaded = load_adapter(tiny_clip(seed=7), tmp_path / "adapter").eval()
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), peft_model.encode_image(images))
        assert torch.equal(loaded.encode_text(texts), peft_model.encode_text(texts))

    trainable = load_adapter(tiny_clip(seed=7), tmp_path / "adapter", is_trainable=True)
    assert sum(p.numel() for p in trainable.parameters() if p.requires_grad) == 8192


def test_load_adapter_from_a_directory_without_adapter_raises_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="adapter_config.json not found"):
        load_adapter(tiny_clip(), tmp_path)


def test_accumulating_lora_linear_equals_peft_linear_in_outputs_and_gradients(tmp_path) -> None:
    """The GEMM-accumulated update is peft's `W x + b + s·B·A x`, forward and backward, and survives save/load."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8))
    ours = apply_lora(copy.deepcopy(base), ["0", "2"], r=4, alpha=12, dropout=0.0)
    reference = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=12, target_modules=["0", "2"]))
    adapted = [m for m in ours.modules() if isinstance(m, LoraLayer)]
    assert len(adapted) == 2 and all(isinstance(m, AccumulatingLoraLinear) for m in adapted)
    for (name, p), (ref_name, q) in zip(ours.named_parameters(), reference.named_parameters()):
        assert name == ref_name
        if "lora_B" in name:
            nn.init.normal_(p)
        q.data.copy_(p.data)
    x = torch.randn(3, 5, 16)
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, expected = ours(x_ours), reference(x_ref)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    (out**2).sum().backward()
    (expected**2).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    for (name, p), (_, q) in zip(ours.named_parameters(), reference.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)  # fp32 summation order only
    save_adapter(ours, tmp_path)
    loaded = load_adapter(copy.deepcopy(base), tmp_path)
    assert all(isinstance(m, AccumulatingLoraLinear) for m in loaded.modules() if isinstance(m, LoraLayer))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected.detach(), atol=1e-6, rtol=1e-5)


class _Copies(TorchDispatchMode):
    """Shapes of the tensors that dtype casts (`aten._to_copy`) produce while active."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default:
            self.shapes.append(tuple(out.shape))
        return out


def test_under_autocast_the_lora_input_is_not_copied_to_fp32_and_no_value_changes() -> None:
    """peft casts a bf16 activation to its fp32 LoRA weights, and autocast casts it straight back: a
    full-width copy each way (and two more for its gradient). Skipping it must change no value."""
    torch.manual_seed(0)
    model = apply_lora(nn.Sequential(nn.Linear(64, 192)), ["0"], r=4, alpha=8, dropout=0.0)
    nn.init.normal_(model.base_model.model[0].lora_B["default"].weight)
    x = torch.randn(2, 10, 64).to(torch.bfloat16).requires_grad_(True)
    upcast = x.detach().float().requires_grad_(True)  # exact: what peft's cast would hand the LoRA path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _Copies() as copies:
            out = model(x)
        reference = model(upcast)
    assert tuple(x.shape) not in copies.shapes, copies.shapes
    assert out.dtype == reference.dtype == torch.bfloat16 and torch.equal(out, reference)
    out.float().square().sum().backward()
    reference.float().square().sum().backward()
    assert torch.equal(x.grad.float(), upcast.grad)
