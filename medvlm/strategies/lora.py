"""LoRA fine-tuning whose forward is exactly the base model with `W + s·B·A` merged in.

peft 0.21 wraps `nn.MultiheadAttention` by merging the adapter into the fused weights
around each forward, and it merges the `out_proj` update twice, so its forward is not
`W + s·B·A`. `nn.MultiheadAttention` also never calls `out_proj.forward`, so no Linear
LoRA can hook it. We therefore replace every `nn.MultiheadAttention` by
`LinearMultiheadAttention`, which computes the same attention through two real
`nn.Linear` layers (`in_proj`, `out_proj`), and let peft's plain Linear LoRA, whose
forward is `W x + b + s·B·A x` by construction, adapt those.

Unfuse after loading pretrained weights: the state-dict keys change from
`attn.in_proj_weight` to `attn.in_proj.weight`.

peft's Linear LoRA adds its update as `result + lora_B(lora_A(x)) * s`: two extra passes
over the layer's full-width output (and two more in backward) for a rank-8 update. That
is where LoRA lost to full fine-tuning; `AccumulatingLoraLinear` computes the same sum
with the update accumulated inside one GEMM.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from medvlm.errors import ConfigError, ModelError

ADAPTER_CONFIG_FILE = "adapter_config.json"


class LinearMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` (same call signature and results) computed through `nn.Linear` layers.

    The fused `in_proj` Linear holds the stacked q, k and v projections exactly like
    `nn.MultiheadAttention.in_proj_weight`. Inputs always go through `in_proj.forward`
    (never through a slice of its weight) so that a LoRA wrapper around it takes effect
    for self- and cross-attention alike.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> LinearMultiheadAttention:
        """Take over `mha`'s parameters (shared, not copied) and its training mode."""
        if not mha._qkv_same_embed_dim:
            raise ModelError(
                f"nn.MultiheadAttention with kdim={mha.kdim}/vdim={mha.vdim} != embed_dim={mha.embed_dim} "
                "cannot be unfused for LoRA; use LoRA only on models whose attention has kdim == vdim == embed_dim"
            )
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ModelError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be unfused for LoRA; "
                "use LoRA only on models whose attention has neither"
            )
        attn = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            batch_first=mha.batch_first,
            device="meta",
        )
        attn.in_proj.weight = mha.in_proj_weight
        attn.in_proj.bias = mha.in_proj_bias
        attn.out_proj.weight = mha.out_proj.weight
        attn.out_proj.bias = mha.out_proj.bias
        return attn.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same arguments, shapes and mask conventions as `nn.MultiheadAttention.forward`.

        `is_causal` is only a hint there (the causal `attn_mask` must be given), so the
        mask itself is always applied here.
        """
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal=True needs the causal attn_mask as well, as in nn.MultiheadAttention")
        self_attention = query is key and key is value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

        q, k, v = (self._split_heads(t) for t in self._project(query, key, value, self_attention))
        mask = self._additive_mask(attn_mask, key_padding_mask, q)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5
            weights = F.dropout((scores if mask is None else scores + mask).softmax(dim=-1), p=dropout_p)
            out = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            weights = None

        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, self_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from the q, k and v rows of `in_proj`'s output, one call for self-attention."""
        if self_attention:
            return self.in_proj(query).chunk(3, dim=-1)
        d = self.embed_dim
        return self.in_proj(query)[..., :d], self.in_proj(key)[..., d : 2 * d], self.in_proj(value)[..., 2 * d :]

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, E) -> (N, heads, L, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _additive_mask(
        self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, q: torch.Tensor
    ) -> torch.Tensor | None:
        """One float mask broadcastable to (N, heads, L, S); bool True means "masked out", as in torch MHA."""
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, q.dtype)
            if mask.dim() == 3:
                mask = mask.view(q.shape[0], self.num_heads, *mask.shape[-2:])
        if key_padding_mask is not None:
            padding = _as_additive(key_padding_mask, q.dtype)[:, None, None, :]
            mask = padding if mask is None else mask + padding
        return mask


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class AccumulatingLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear (same parameters, keys, merge and save) computing `W x + b + s·B·(A x)` as
    `addmm(W x + b, A x, s·Bᵀ)`: the rank-r update is accumulated by the GEMM that computes it,
    instead of materialising `B A x`, scaling it and adding it in three full-width passes.

    Anything but the plain case (merged or disabled adapters, several adapters, DoRA and other
    variants, per-sample adapter names) goes through peft's own forward.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = self.active_adapters[0] if len(self.active_adapters) == 1 else None
        if (args or kwargs or self.disable_adapters or self.merged or adapter not in self.lora_A
                or adapter in self.lora_variant):
            return super().forward(x, *args, **kwargs)
        base = self.base_layer(x)
        lora_a, lora_b = self.lora_A[adapter], self.lora_B[adapter]
        down = lora_a(self.lora_dropout[adapter](_as_input_of(x, lora_a)))
        flat = torch.addmm(base.reshape(-1, base.shape[-1]), down.reshape(-1, down.shape[-1]),
                           lora_b.weight.t().to(down.dtype), alpha=self.scaling[adapter])
        return flat.view(base.shape).to(base.dtype)


def _as_input_of(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`x` in `layer`'s weight dtype, as peft casts it, except under autocast: there the Linear casts
    its input to the autocast dtype anyway, so peft's cast of a bf16 activation to fp32 is a
    full-width copy there and back (and its gradient another) that changes no value."""
    if torch.is_autocast_enabled(x.device.type):
        return x
    return x.to(layer.weight.dtype)


def _lora_config(config: LoraConfig) -> LoraConfig:
    """`config` with nn.Linear targets dispatched to `AccumulatingLoraLinear` (peft's custom-module hook)."""
    config._register_custom_module({nn.Linear: AccumulatingLoraLinear})
    return config


def unfuse_attention(model: nn.Module) -> int:
    """Replace every `nn.MultiheadAttention` below `model` in place; return how many were replaced.

    All replacements are built before any is installed, so a refused layer leaves the model untouched.
    """
    replacements: dict[int, LinearMultiheadAttention] = {}
    slots: list[tuple[nn.Module, str, int]] = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if not isinstance(child, nn.MultiheadAttention):
                continue
            if id(child) not in replacements:
                try:
                    replacements[id(child)] = LinearMultiheadAttention.from_multihead_attention(child)
                except ModelError as err:
                    raise ModelError(f"{_join(parent_name, child_name)}: {err}") from None
            slots.append((parent, child_name, id(child)))
    for parent, child_name, key in slots:
        setattr(parent, child_name, replacements[key])
    return len(replacements)


def _join(parent_name: str, child_name: str) -> str:
    return f"{parent_name}.{child_name}" if parent_name else child_name


def lora_target_regex(prefixes: list[str], suffixes: list[str]) -> str:
    """A peft `target_modules` regex (full match) for modules below any prefix whose name ends with any suffix.

    A prefix is a module path ("visual" or "visual."); "" means the whole model. Suffixes
    match whole name components: "attn.in_proj" matches "visual.x.0.attn.in_proj", never "xattn.in_proj".
    """
    if not prefixes or not suffixes:
        raise ConfigError("LoRA targets need at least one prefix and one suffix; set both in the model's lora config")
    heads = "|".join(re.escape(p.rstrip(".")) + r"\." if p.rstrip(".") else "" for p in prefixes)
    tails = "|".join(re.escape(s) for s in suffixes)
    return rf"(?:{heads})(?:.*\.)?(?:{tails})"


def apply_lora(
    model: nn.Module, target_modules: str | list[str], r: int, alpha: float, dropout: float
) -> PeftModel:
    """Unfuse attention, then wrap `model` (modified in place) with peft LoRA on the targeted Linear layers.

    `target_modules` follows peft: a string is a regex that must match the full module
    name; a list matches names equal to, or ending in "." + , an entry. Only LoRA
    parameters stay trainable. Targets must be `nn.Linear` so that the forward is
    exactly `W + (alpha / r)·B·A`.
    """
    unfuse_attention(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    _check_targets(model, config)
    return get_peft_model(model, _lora_config(config))


def _check_targets(model: nn.Module, config: LoraConfig) -> None:
    """Fail early, naming real module names, where peft would fail late or adapt a non-Linear layer."""
    matched = {name: module for name, module in model.named_modules() if check_target_module_exists(config, name)}
    if not matched:
        examples = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][:6]
        raise ModelError(
            f"LoRA targets {config.target_modules!r} match no module of {type(model).__name__}; "
            f"target its Linear layers, e.g. {', '.join(examples)}"
        )
    not_linear = [f"{name} ({type(m).__name__})" for name, m in matched.items() if not isinstance(m, nn.Linear)]
    if not_linear:
        raise ModelError(
            f"LoRA targets {config.target_modules!r} match non-Linear modules {', '.join(not_linear[:6])}; "
            "narrow the targets to Linear layers such as attn.in_proj, attn.out_proj, mlp.c_fc, mlp.c_proj"
        )


def save_adapter(peft_model: PeftModel, directory: str | Path) -> None:
    """Write adapter_model.safetensors and adapter_config.json (LoRA weights only) to `directory`."""
    peft_model.save_pretrained(str(directory), safe_serialization=True)


def load_adapter(base_model: nn.Module, directory: str | Path, is_trainable: bool = False) -> PeftModel:
    """Load an adapter saved by `save_adapter` onto a freshly built `base_model` (unfused here, in place)."""
    if not (Path(directory) / ADAPTER_CONFIG_FILE).is_file():
        raise ModelError(
            f"LoRA adapter {ADAPTER_CONFIG_FILE} not found in {directory}; point to a directory written by save_adapter"
        )
    unfuse_attention(base_model)
    config = _lora_config(LoraConfig.from_pretrained(str(directory)))
    return PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable, config=config)
