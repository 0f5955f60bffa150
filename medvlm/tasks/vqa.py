"""VQA as classification over an answer vocabulary, with a bilinear attention network (BAN) head.

The released code of *General or Medical CLIP, Which one Shall We Choose?* fuses one pooled image vector with the question, which throws
away where things are. Here the BAN head (Kim et al., NeurIPS 2018) attends jointly over the
image token grid (ViT patches or CNN cells, `ClipModel.image_tokens`) and the question's token
states (`ClipModel.text_tokens`): G glimpses of bilinear attention maps over every
(image token, word) pair, each pooled with low-rank bilinear pooling and added residually to
the question states, then a classifier on the masked sum of the question states.

Padding: padded question tokens get exactly zero attention weight (their logits are -inf
before the joint softmax), their states are zeroed on entry and left out of the final sum, so
the output does not depend on how long the padding is or what it holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvlm.data.transforms import to_model_input
from medvlm.data.vqa import normalize_answer
from medvlm.metrics.vqa import vqa_metrics
from medvlm.zoo.base import ClipModel, TextBatch

UNKNOWN = "unknown"
ATTENTION_RANK = 3
POOL_RANK = 1


@dataclass
class AnswerVocab:
    """Normalised answers; index 0 is `unknown`, which every out-of-vocabulary answer maps to.

    `closed` holds the indices of answers given to closed questions (zero-shot ranks only those
    for closed questions).
    """

    answers: list[str]
    closed: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, answers: Iterable[str], closed: Iterable[bool]) -> AnswerVocab:
        """From the train + validation answers: sorted normalised answers after `unknown`."""
        pairs = [(normalize_answer(a), bool(c)) for a, c in zip(answers, closed)]
        words = [UNKNOWN] + sorted({a for a, _ in pairs} - {UNKNOWN})
        index = {a: i for i, a in enumerate(words)}
        return cls(words, sorted({index[a] for a, c in pairs if c}))

    def __len__(self) -> int:
        return len(self.answers)

    def encode(self, answers: Iterable[str]) -> np.ndarray:
        """Answer indices; answers outside the vocabulary become 0 (`unknown`)."""
        index = {a: i for i, a in enumerate(self.answers)}
        return np.array([index.get(normalize_answer(a), 0) for a in answers], dtype=np.int64)

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.answers[int(i)] for i in indices]

    def to_dict(self) -> dict:
        return {"answers": self.answers, "closed": self.closed}


def _fc(in_dim: int, out_dim: int, dropout: float, activation: bool = True) -> nn.Sequential:
    """BAN's FCNet layer: dropout, linear, ReLU."""
    layers: list[nn.Module] = [nn.Dropout(dropout), nn.Linear(in_dim, out_dim)]
    return nn.Sequential(*layers, nn.ReLU()) if activation else nn.Sequential(*layers)


class BilinearAttention(nn.Module):
    """G bilinear attention maps over all (image token, question token) pairs, masked on padding.

    logits_g[i, j] = (p_g ∘ U'ᵀ v_i)ᵀ (V'ᵀ q_j) + b_g with rank-`rank` factors; one softmax
    over all i, j per glimpse.
    """

    def __init__(self, v_dim: int, q_dim: int, hidden: int, glimpses: int, rank: int, dropout: float):
        super().__init__()
        self.v_net = _fc(v_dim, hidden * rank, dropout)
        self.q_net = _fc(q_dim, hidden * rank, dropout)
        self.h_mat = nn.Parameter(torch.randn(1, glimpses, 1, hidden * rank) / math.sqrt(hidden * rank))
        self.h_bias = nn.Parameter(torch.zeros(1, glimpses, 1, 1))

    def forward(self, v: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """v [B, Nv, Dv], q [B, Nq, Dq], mask [B, Nq] (True = real token) -> weights [B, G, Nv, Nq]."""
        v_ = self.v_net(v).unsqueeze(1)
        q_ = self.q_net(q).unsqueeze(1)
        logits = (v_ * self.h_mat) @ q_.transpose(2, 3) + self.h_bias
        logits = logits.float().masked_fill(~mask[:, None, None, :], float("-inf"))
        return logits.flatten(2).softmax(dim=-1).view_as(logits)


class BilinearPool(nn.Module):
    """Low-rank bilinear pooling of v and q under one attention map: f = Σ_ij A_ij (Uᵀv_i) ∘ (Vᵀq_j), rank-summed."""

    def __init__(self, v_dim: int, q_dim: int, hidden: int, rank: int, dropout: float):
        super().__init__()
        self.hidden, self.rank = hidden, rank
        self.v_net = _fc(v_dim, hidden * rank, dropout)
        self.q_net = _fc(q_dim, hidden * rank, dropout)

    def forward(self, v: torch.Tensor, q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """weights [B, Nv, Nq] -> joint features [B, hidden]."""
        joint = (self.v_net(v) * (weights.to(v.dtype) @ self.q_net(q))).sum(dim=1)
        return joint.view(-1, self.hidden, self.rank).sum(dim=-1)


class BANHead(nn.Module):
    """The BAN fusion head over an image token grid and masked question token states."""

    def __init__(self, v_dim: int, q_dim: int, n_answers: int, hidden: int = 512, glimpses: int = 2,
                 dropout: float = 0.2):
        super().__init__()
        self.config = {"v_dim": v_dim, "q_dim": q_dim, "n_answers": n_answers, "hidden": hidden,
                       "glimpses": glimpses, "dropout": dropout}
        self.q_in = nn.Linear(q_dim, hidden)
        self.attention = BilinearAttention(v_dim, hidden, hidden, glimpses, ATTENTION_RANK, dropout)
        self.pools = nn.ModuleList(BilinearPool(v_dim, hidden, hidden, POOL_RANK, dropout) for _ in range(glimpses))
        self.q_proj = nn.ModuleList(_fc(hidden, hidden, dropout, activation=False) for _ in range(glimpses))
        self.classifier = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(2 * hidden, n_answers))

    def _question(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.q_in(q.float()).masked_fill(~mask[..., None], 0.0)

    def attention_maps(self, v: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The G attention maps [B, G, Nv, Nq]; exactly zero on padded question tokens."""
        mask = mask.bool()
        return self.attention(v.float(), self._question(q, mask), mask)

    def forward(self, v: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """v [B, Nv, Dv] image tokens, q [B, Nq, Dq] question states, mask [B, Nq] -> answer logits."""
        mask = mask.bool()
        v = v.float()
        q = self._question(q, mask)
        att = self.attention(v, q, mask)
        for g, (pool, proj) in enumerate(zip(self.pools, self.q_proj)):
            q = q + proj(pool(v, q, att[:, g])).unsqueeze(1)
        return self.classifier((q * mask[..., None]).sum(dim=1))


class VQAModel(nn.Module):
    """CLIP token grids into the BAN head; takes uint8 images and question token ids from the loader.

    Token ids are cut after the batch's longest question (right padding) before the text
    tower runs: `text_tokens` gives the real tokens the states a full-context forward gives
    them, and the head ignores padding, so this only saves compute.
    """

    def __init__(self, clip: ClipModel, head: BANHead):
        super().__init__()
        self.clip, self.head = clip, head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        v = self.clip.image_tokens(to_model_input(inputs["images"], self.clip.preprocess))
        mask = inputs["attention_mask"].bool()
        n = int(mask.sum(dim=1).max())
        q, mask = self.clip.text_tokens(TextBatch(inputs["input_ids"][:, :n], mask[:, :n]))
        return self.head(v, q, mask)


class CachedVQA(nn.Module):
    """The BAN head alone, on cached token features (frozen encoders)."""

    def __init__(self, head: BANHead):
        super().__init__()
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(inputs["image_tokens"], inputs["text_tokens"], inputs["text_mask"])


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the answer index (targets [N, 2]: answer index, closed flag)."""
    return F.cross_entropy(logits.float(), targets[:, 0].long())


def tokenize_questions(clip: ClipModel, questions: list[str]) -> tuple[TextBatch, int]:
    """All distinct questions tokenised once with the model's tokenizer; also the longest real length."""
    batch = clip.tokenize(questions)
    return batch, int(batch.attention_mask.sum(dim=1).max())


class VQAObjective:
    """Cross-entropy over the vocabulary; accuracy and weighted F1 overall/open/closed."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return vqa_loss(outputs, targets)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        scores = vqa_metrics(targets[:, 0].numpy(), outputs.argmax(dim=1).numpy(), targets[:, 1].numpy().astype(bool))
        return {k: v for k, v in scores.items() if k != "oov"}
