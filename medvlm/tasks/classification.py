"""Classification on CLIP embeddings: the prompt classifier (the MIDL paper's) and a linear head.

`PromptClassifier` adds no layer: logits = logit_scale * cos(image embedding, class embedding),
where a class embedding is its prompts' text embeddings averaged (CLIP_benchmark: normalise,
mean, normalise), computed by the text tower inside the graph. Whatever trains in the model
(the projections and the logit scale under `partial`, every weight under `full`, text-side
adapters under `lora` with `lora_text`) therefore learns through the prompts.

`LinearHead` is the other choice (`head=linear`, and always `strategy=linear`): a linear layer on
normalised image embeddings. Zero-shot is that head set to `logit_scale * class_embeddings`
(bias 0), exactly the prompt classifier's frozen logits, so cached image features serve it;
`head_init=zeroshot` starts a linear head from there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvlm.data.base import LabelKind
from medvlm.data.transforms import to_model_input
from medvlm.metrics.classification import classification_metrics, probabilities
from medvlm.zoo.base import ClipModel, TextBatch

NEGATION_TEMPLATE = "no {}"
TEXT_BATCH = 256


@torch.no_grad()
def text_embeddings(model: ClipModel, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, encoded in batches."""
    device = next(model.parameters()).device
    tokens = model.tokenize(texts)
    out = [F.normalize(model.encode_text(tokens[i:i + batch_size].to(device)).float(), dim=-1)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def prompt_owners(prompts: list[list[str]]) -> torch.Tensor:
    """The class index of every prompt of the flattened prompt sets."""
    return torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor([len(p) for p in prompts]))


def average_by_class(emb: torch.Tensor, owner: torch.Tensor, classes: int) -> torch.Tensor:
    """Template-averaged class embeddings, as CLIP_benchmark: normalise, mean, normalise."""
    emb = F.normalize(emb.float(), dim=-1)
    owner = owner.to(emb.device)
    summed = emb.new_zeros(classes, emb.shape[1]).index_add(0, owner, emb)
    return F.normalize(summed / torch.bincount(owner, minlength=classes).unsqueeze(1), dim=-1)


def class_embeddings(model: ClipModel, prompts: list[list[str]]) -> torch.Tensor:
    """Template-averaged class embeddings of a frozen model."""
    flat = [p for class_prompts in prompts for p in class_prompts]
    return average_by_class(text_embeddings(model, flat), prompt_owners(prompts), len(prompts))


def negated_prompts(prompts: list[list[str]], class_names: list[str]) -> list[list[str]]:
    """Per-label negative prompts for multi-label zero-shot (positive vs. 'no <finding>')."""
    return [[p.replace(name, NEGATION_TEMPLATE.format(name)) for p in class_prompts]
            for class_prompts, name in zip(prompts, class_names)]


@torch.no_grad()
def zero_shot_head(model: ClipModel, prompts: list[list[str]], class_names: list[str],
                   kind: LabelKind) -> tuple[torch.Tensor, torch.Tensor]:
    """Head weight and bias that reproduce zero-shot logits: the frozen `PromptClassifier`'s.

    Binary/multi-class: `logit_scale * class_emb`, bias 0, so softmax(head(x)) = softmax(s * cos);
    for SigLIP-style models the shared bias cancels in the softmax, so the same holds.
    Multi-label, softmax-CLIP: per label a 2-way softmax between positive and negated prompts,
    i.e. sigmoid(s * (cos_pos - cos_neg)), so the weight is `s * (pos - neg)`.
    Multi-label, sigmoid models (SigLIP): their own per-pair probability sigmoid(s * cos + b).
    """
    weight, bias = PromptClassifier(model, prompts, class_names, kind).to(model_device(model)).weight_and_bias()
    return weight.detach(), bias.detach()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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


class PromptClassifier(nn.Module):
    """logits = logit_scale * cos(image, class prompts) with the text tower in the graph; no extra layer.

    Binary/multi-class: `s * cos` (softmax over classes). Multi-label: per label the 2-way softmax of
    its prompts against the negated ones, `s * (cos_pos - cos_neg)`, or for sigmoid models (SigLIP)
    their own `s * cos + b`, as `zero_shot_head`. The prompts are tokenised once; outside autograd
    (evaluation) the class embeddings are computed once per `eval()`/`train()` switch, not per batch.
    """

    def __init__(self, clip: ClipModel, prompts: list[list[str]], class_names: list[str], kind: LabelKind):
        super().__init__()
        self.clip, self.kind, self.classes = clip, kind, len(prompts)
        self.contrast = kind == "multilabel" and clip.logit_bias() is None
        sets = prompts + (negated_prompts(prompts, class_names) if self.contrast else [])
        tokens = clip.tokenize([p for class_prompts in sets for p in class_prompts])
        self.register_buffer("input_ids", tokens.input_ids, persistent=False)
        self.register_buffer("attention_mask", tokens.attention_mask, persistent=False)
        self.register_buffer("owner", prompt_owners(sets), persistent=False)
        self.sets = len(sets)
        self._frozen: tuple[torch.Tensor, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> PromptClassifier:
        self._frozen = None
        return super().train(mode)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits' linear map on normalised image embeddings: (s * class embeddings, bias)."""
        emb = torch.cat([self.clip.encode_text(TextBatch(self.input_ids[i:i + TEXT_BATCH],
                                                         self.attention_mask[i:i + TEXT_BATCH]))
                         for i in range(0, len(self.input_ids), TEXT_BATCH)])
        classes = average_by_class(emb, self.owner, self.sets)
        scale = self.clip.logit_scale().float()
        weight = scale * (classes[:self.classes] - classes[self.classes:] if self.contrast else classes)
        bias = torch.zeros(self.classes, device=weight.device)
        logit_bias = self.clip.logit_bias() if self.kind == "multilabel" else None
        return weight, bias if logit_bias is None else bias + logit_bias.float().reshape(-1)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.clip.encode_image(to_model_input(images, self.clip.preprocess)).float(), dim=-1)
        if torch.is_grad_enabled():
            weight, bias = self.weight_and_bias()
        else:
            self._frozen = self._frozen or self.weight_and_bias()
            weight, bias = self._frozen
        return image @ weight.T + bias


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
    """Loss and metrics of a classifier whose outputs are logits.

    The metrics watch validation epochs: a class missing from the split makes the AUCs NaN with a
    warning rather than failing the run (the test metrics are computed strictly, `log_test_results`).
    """

    def __init__(self, module: torch.nn.Module, kind: LabelKind):
        self.module, self.kind = module, kind

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return classification_loss(outputs, targets, self.kind)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return classification_metrics(targets.numpy(), probabilities(outputs, self.kind), self.kind, undefined="nan")
