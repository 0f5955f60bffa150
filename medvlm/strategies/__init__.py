"""Fine-tuning strategies, one small class per idea (as peft's tuners).

Each strategy decides which parameters of a `ClipModel` train. Names in a zoo entry's
`partial` list and LoRA targets are relative to the backend module `clip.net`.
"""

from __future__ import annotations

from torch import nn

from medvlm.catalog import STRATEGY_KINDS, StrategyKind
from medvlm.config import RunConfig
from medvlm.errors import ModelError
from medvlm.zoo.base import ClipModel


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class Strategy:
    """Decides which parameters train; what it is capable of comes from its row in `medvlm.catalog`."""

    name = ""

    @property
    def kind(self) -> StrategyKind:
        """What this strategy does: trains at all, trains the encoder, produces an adapter, ..."""
        return STRATEGY_KINDS[self.name]

    def prepare(self, clip: ClipModel, cfg: RunConfig) -> ClipModel:
        raise NotImplementedError


class ZeroShot(Strategy):
    """No training at all: class prompts become the head."""

    name = "zeroshot"

    def prepare(self, clip: ClipModel, cfg: RunConfig) -> ClipModel:
        _freeze(clip)
        return clip


class LinearProbe(ZeroShot):
    """Frozen encoder, a linear head on cached image embeddings."""

    name = "linear"


class Frozen(ZeroShot):
    """Encoders frozen, a task head trains on their cached features (VQA's counterpart of `linear`)."""

    name = "frozen"


class Partial(Strategy):
    """Only the projection heads and the logit scale train (the 'partial' fine-tuning of *General or Medical CLIP, Which one Shall We Choose?*)."""

    name = "partial"

    def prepare(self, clip: ClipModel, cfg: RunConfig) -> ClipModel:
        _freeze(clip)
        matched = set()
        for name, p in clip.net.named_parameters():
            for prefix in clip.spec.partial:
                if name == prefix or name.startswith(prefix + "."):
                    p.requires_grad_(True)
                    matched.add(prefix)
        missing = [p for p in clip.spec.partial if p not in matched]
        if missing or not matched:
            raise ModelError(f"partial: model '{clip.spec.name}' has no parameters named {missing or clip.spec.partial}; "
                             f"fix the zoo entry's 'partial' list")
        return clip


class Projector(Partial):
    """Generative models: only the multimodal projector trains (the paper's "FT (MLP)")."""

    name = "mlp"


class Full(Strategy):
    """Every parameter trains."""

    name = "full"

    def prepare(self, clip: ClipModel, cfg: RunConfig) -> ClipModel:
        for p in clip.parameters():
            p.requires_grad_(True)
        return clip


class Lora(Strategy):
    """Low-rank adapters on the vision tower (and optionally the text tower), exact W + s·B·A."""

    name = "lora"

    def prepare(self, clip: ClipModel, cfg: RunConfig) -> ClipModel:
        from medvlm.strategies.lora import apply_lora  # lazy: peft loads only for LoRA runs

        clip.net = apply_lora(clip.net, lora_targets(clip, cfg), r=cfg.lora_r, alpha=cfg.lora_alpha,
                              dropout=cfg.lora_dropout)
        return clip


def lora_targets(clip: ClipModel, cfg: RunConfig) -> str:
    """The regex of module names LoRA adapts: `lora_targets` override, else the zoo entry's towers.

    Generative models select parts instead (`lora_parts`: v, l, m and combinations); each part
    contributes its own prefix with its own suffixes, so no part's names leak into another.
    """
    from medvlm.strategies.lora import lora_target_regex  # lazy: peft loads only for LoRA runs

    if clip.spec.lora_parts:
        parts = clip.spec.lora_parts
        chosen = cfg.lora_parts or "l"
        return "|".join(f"(?:{lora_target_regex([parts[p]['prefix']], cfg.lora_targets or parts[p]['targets'])})"
                        for p in chosen)
    prefixes, suffixes = [clip.spec.vision_prefix], list(cfg.lora_targets or clip.spec.lora_vision)
    if cfg.lora_text:
        prefixes.append(clip.spec.text_prefix)
        suffixes += [s for s in (cfg.lora_targets or clip.spec.lora_text) if s not in suffixes]
    return lora_target_regex(prefixes, suffixes)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (ZeroShot(), LinearProbe(), Frozen(), Partial(), Full(), Lora(),
                                                        Projector())}


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]
