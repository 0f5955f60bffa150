"""PMC-CLIP from the authors' `checkpoint.pt` (WeixiongLin/PMC-CLIP, release `PMC_CLIP:beta`).

Architecture, as the authors' `PMC_CLIP` model (config `RN50_fusion4`) computes embeddings:
- image: CLIP's ModifiedResNet-50 (3-conv stem, anti-aliased strides, attention pool with
  32 heads = width*32/head_width 64) straight to the 768-d joint space;
- text: PubMedBERT (`microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext`), ids
  padded to 77 and run WITHOUT an attention mask (the authors' `encode_text` passes none, so
  padding takes part in attention); the [CLS] state (`cls_id` 2, always position 0) times
  `text_projection` (768x768) is the embedding;
- logit scale: `logit_scale.exp()`.

Checkpoint: `{"epoch", "name", "state_dict", "optimizer"}`, keys prefixed `module.` (DDP).
Every key of the embedding path is loaded; these are dropped knowingly, because they
belong to the masked-language-modelling branch of pre-training and never touch an
embedding: `fusion_module.*`, `mlm_projection`, `img_special_token`, `positional_embedding`,
`ln_final.*`, `text_encoder.pooler.*` (BERT's unused pooler), and the stale constant
`text_encoder.embeddings.position_ids` (checked equal to 0..n-1 first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from torch import nn

from medvlm.errors import ModelError
from medvlm.zoo import hf_parts
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import checkpoint_file, load_exact, load_torch_checkpoint, required, take, weights_digest

UNUSED_PREFIXES = ("fusion_module.", "mlm_projection", "img_special_token", "positional_embedding", "ln_final.")
HEAD_WIDTH = 64


class PMCCLIPNet(nn.Module):
    """The embedding path of the authors' `PMC_CLIP`, under the checkpoint's own key names."""

    def __init__(self, visual: ModifiedResNet, text_encoder: nn.Module, embed_dim: int):
        super().__init__()
        self.visual = visual
        self.text_encoder = text_encoder
        self.text_projection = nn.Parameter(torch.empty(text_encoder.config.hidden_size, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))


class LinearAttentionPool2d(AttentionPool2d):
    """CLIP's attention pool computed through its Linear layers' forward (same keys, same result).

    The original passes `q_proj.weight` etc. straight to `F.multi_head_attention_forward`,
    so a LoRA wrapper on those Linear layers would never run; here every projection is a
    call, and only the pooled (mean) query is computed, as only its output is returned.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # NCHW -> N(HW)C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        heads = self.num_heads
        q, k, v = (proj(t).unflatten(-1, (heads, -1)).transpose(1, 2)
                   for proj, t in ((self.q_proj, x[:, :1]), (self.k_proj, x), (self.v_proj, x)))
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.c_proj(pooled[:, 0])


def resnet_cells(visual: ModifiedResNet, pixels: torch.Tensor) -> torch.Tensor:
    """Cells of the last feature map through the attention pool's value and output maps (MaskCLIP): [B, HW, D]."""
    x = visual.stem(pixels)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    cells = x.flatten(2).transpose(1, 2)
    pool = visual.attnpool
    return pool.c_proj(pool.v_proj(cells + pool.positional_embedding[1:].to(cells.dtype)))


class PMCCLIPModel(hf_parts.TokenizerClipModel):
    def __init__(self, net: PMCCLIPNet, tokenizer, spec: ModelSpec, preprocess: Preprocess):
        super().__init__(net, tokenizer, spec, preprocess, net.text_projection.shape[1])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.visual(pixels)

    def _states(self, text: TextBatch) -> torch.Tensor:
        """BERT states as PMC-CLIP computes them: ids padded to 77, no attention mask, padding attended.

        Ids cut short by a caller are padded back first, so every position gets its full-context state.
        """
        n = text.input_ids.shape[1]
        full = hf_parts.full_context(text, self.spec.context_length, self.tokenizer.pad_token_id)
        return self.net.text_encoder(input_ids=full.input_ids).last_hidden_state[:, :n]

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        return self._states(text)[:, 0] @ self.net.text_projection

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return resnet_cells(self.net.visual, pixels)

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's state times `text_projection`: ([B, L, D], mask); the [CLS] one is the embedding."""
        return self._states(text) @ self.net.text_projection, text.attention_mask

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp()


def _visual_from(state: dict[str, torch.Tensor], embed_dim: int, name: str) -> ModifiedResNet:
    """A ModifiedResNet sized from the checkpoint's own tensors (layers, width, image size)."""
    layers = [len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{i}.")}) for i in range(1, 5)]
    if not all(layers) or "visual.attnpool.positional_embedding" not in state:
        raise ModelError(f"model '{name}': checkpoint has no ModifiedResNet image encoder under 'visual.'")
    width = required(state, "visual.conv3.weight", name).shape[0]
    grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    heads = width * 32 // HEAD_WIDTH
    visual = ModifiedResNet(layers, embed_dim, heads=heads, image_size=grid * 32, width=width)
    visual.attnpool = LinearAttentionPool2d(grid, width * 32, heads, embed_dim)
    return visual


def load_pmc_clip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    path = checkpoint_file(spec.name, location, entry["checkpoint"], entry.get("download"))
    ckpt = load_torch_checkpoint(path)
    state = {k.removeprefix("module."): v for k, v in ckpt.get("state_dict", ckpt).items()}
    for prefix in UNUSED_PREFIXES:
        take(state, prefix)
    text_encoder = hf_parts.bert_from_state(take(state, "text_encoder."), entry["text_tower"], spec.name)
    embed_dim = required(state, "text_projection", spec.name).shape[1]
    net = PMCCLIPNet(_visual_from(state, embed_dim, spec.name), text_encoder, embed_dim)
    load_exact(net, state, spec.name, "PMC-CLIP", loaded=("text_encoder.",))
    preprocess = Preprocess(image_size=net.visual.image_size, mean=tuple(entry["mean"]), std=tuple(entry["std"]))
    spec.pin = {"model": str(path.resolve()), "sha256": weights_digest(path)}
    return PMCCLIPModel(net.float(), hf_parts.tokenizer(entry["text_tower"], spec.name), spec, preprocess)
