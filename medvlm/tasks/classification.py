"""Classification on CLIP image embeddings: zero-shot prompts and a linear head.

One module serves zero-shot and fine-tuning: logits = head(normalise(image_embedding)).
Zero-shot is the head set to `logit_scale * class_embeddings` (bias 0), which is
exactly CLIP's `logit_scale * cos`; `head_init=zeroshot` starts fine-tuning from there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvlm.data.base import LabelKind
from medvlm.data.transforms import to_model_input
from medvlm.metrics.classification import classification_metrics, probabilities
from medvlm.zoo.base import ClipModel

NEGATION_TEMPLATE = "no {}"


@torch.no_grad()
def text_embeddings(model: ClipModel, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, encoded in batches."""
    device = next(model.parameters()).device
    tokens = model.tokenize(texts)
    out = [F.normalize(model.encode_text(tokens[i:i + batch_size].to(device)).float(), dim=-1)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def class_embeddings(model: ClipModel, prompts: list[list[str]]) -> torch.Tensor:
    """Template-averaged class embeddings, as CLIP_benchmark: normalise, mean, normalise."""
    flat = [p for class_prompts in prompts for p in class_prompts]
    owner = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor([len(p) for p in prompts]))
    emb = text_embeddings(model, flat)
    summed = torch.zeros(len(prompts), emb.shape[1], device=emb.device).index_add_(0, owner.to(emb.device), emb)
    return F.normalize(summed / torch.bincount(owner).to(emb.device).unsqueeze(1), dim=-1)


def negated_prompts(prompts: list[list[str]], class_names: list[str]) -> list[list[str]]:
    """Per-label negative prompts for multi-label zero-shot (positive vs. 'no <finding>')."""
    return [[p.replace(name, NEGATION_TEMPLATE.format(name)) for p in class_prompts]
            for class_prompts, name in zip(prompts, class_names)]


def zero_shot_head(model: ClipModel, prompts: list[list[str]], class_names: list[str],
                   kind: LabelKind) -> tuple[torch.Tensor, torch.Tensor]:
    """Head weight and bias that reproduce zero-shot logits.

    Binary/multi-class: `logit_scale * class_emb`, bias 0, so softmax(head(x)) = softmax(s * cos);
    for SigLIP-style models the shared bias cancels in the softmax, so the same holds.
    Multi-label, softmax-CLIP: per label a 2-way softmax between positive and negated prompts,
    i.e. sigmoid(s * (cos_pos - cos_neg)), so the weight is `s * (pos - neg)`.
    Multi-label, sigmoid models (SigLIP): their own per-pair probability sigmoid(s * cos + b).
    """
    scale = model.logit_scale().detach().float()
    positive = class_embeddings(model, prompts)
    bias = torch.zeros(len(prompts), device=positive.device)
    if kind != "multilabel":
        return scale * positive, bias
    logit_bias = model.logit_bias()
    if logit_bias is not None:
        return scale * positive, bias + logit_bias.detach().float().reshape(-1)[0]
    negative = class_embeddings(model, negated_prompts(prompts, class_names))
    return scale * (positive - negative), bias


class LinearHead(nn.Module):
    """A linear layer on L2-normalised embeddings."""

    def __init__(self, dim: int, outputs: int):
        super().__init__()
        self.linear = nn.Linear(dim, outputs)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(embeddings.float(), dim=-1))

    @torch.no_grad()
    def set_zero_shot(self, weight_and_bias: tuple[torch.Tensor, torch.Tensor]) -> None:
        weight, bias = weight_and_bias
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(bias)


class ImageClassifier(nn.Module):
    """A CLIP image tower plus a linear head; takes uint8 image batches straight from the loader."""

    def __init__(self, clip: ClipModel, head: LinearHead):
        super().__init__()
        self.clip = clip
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.clip.encode_image(to_model_input(images, self.clip.preprocess)))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, kind: LabelKind) -> torch.Tensor:
    """Cross-entropy (binary and multi-class share 2+-way softmax); masked BCE for multi-label.

    Multi-label labels of -1 (CheXpert 'uncertain' under the `ignore` policy) carry no loss.
    """
    logits = logits.float()
    if kind != "multilabel":
        return F.cross_entropy(logits, labels.long())
    mask = labels >= 0
    loss = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float(), reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def head_outputs(kind: LabelKind, num_classes: int) -> int:
    """Binary tasks keep two logits so probabilities are a softmax, as in zero-shot."""
    return max(num_classes, 2) if kind != "multilabel" else num_classes


class ClassificationObjective:
    """Loss and metrics of a classifier whose outputs are logits."""

    def __init__(self, module: torch.nn.Module, kind: LabelKind):
        self.module, self.kind = module, kind

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return classification_loss(outputs, targets, self.kind)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return classification_metrics(targets.numpy(), probabilities(outputs, self.kind), self.kind)
