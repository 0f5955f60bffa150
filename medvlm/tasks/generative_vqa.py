"""Generative VQA: prompts through the model's chat template, answer-only teacher forcing, greedy decoding.

Every question becomes one chat turn with the image (`GenerativeVLM.render`). Training rows are
the generation prompt followed by the answer and EOS, exactly as the template renders the whole
turn; the loss covers the answer tokens and EOS only (`answer_mask`): the prompt, the image
tokens and padding never count. Generation uses the same prompt ids, left-padded so every row's
last prompt token sits in the last column, and greedy decoding for at most `max_new_tokens`.

Everything is tokenised once into padded tables (`PromptTable`); batches then gather rows, and
each batch is cut to its own longest row before the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medvlm.data.transforms import to_model_input
from medvlm.zoo.llava import GenerativeVLM


@dataclass
class PromptTable:
    """Token tables for a list of QA rows.

    `input_ids`/`attention_mask`/`answer_mask` [N, L]: prompt + answer + EOS, right-padded, for
    teacher forcing. `prompt_ids`/`prompt_mask` [N, P]: the generation prompt, left-padded.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor


def vision_inputs(vlm: GenerativeVLM, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """uint8 images -> the model's image inputs, in the weights' dtype and device.

    One square image per row: normalised on the device in one batch. LLaVA-NeXT: its image
    processor cuts each image into its any-resolution tiles (`pixel_values` [B, tiles, 3, S, S]
    plus `image_sizes`), on the CPU.
    """
    weight = next(vlm.parameters())
    if vlm.image_processor is None:
        return {"pixel_values": to_model_input(images, vlm.preprocess).to(weight.dtype)}
    out = vlm.image_processor(list(images.cpu().permute(0, 2, 3, 1).numpy()), return_tensors="pt")
    return {"pixel_values": out["pixel_values"].to(weight.device, weight.dtype),
            "image_sizes": out["image_sizes"].to(weight.device)}


def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = True
    return ids, mask


def answer_continuations(vlm: GenerativeVLM, prompts: list[str], questions: list[str],
                         answers: list[str]) -> list[str]:
    """The text the template adds after the generation prompt when the assistant answers."""
    out = []
    for prompt, question, answer in zip(prompts, questions, answers):
        full = vlm.render(question, answer)
        if not full.startswith(prompt):
            raise ValueError(f"the chat template's answered turn does not extend its generation prompt: {full!r}")
        out.append(full[len(prompt):])
    return out


def build_prompts(vlm: GenerativeVLM, questions: list[str], answers: list[str] | None = None) -> PromptTable:
    """Tokenise every row once. Without answers only the generation prompts are filled (training tables empty)."""
    prompts = [vlm.render(q) for q in questions]
    prompt_rows = vlm.encode(prompts)
    prompt_ids, prompt_mask = _pad(prompt_rows, vlm.pad_token_id, left=True)
    if answers is None:
        empty = torch.zeros((len(questions), 1), dtype=torch.long)
        return PromptTable(empty, empty.bool(), empty.bool(), prompt_ids, prompt_mask)
    continuations = answer_continuations(vlm, prompts, questions, answers)
    full_rows = vlm.encode([p + c for p, c in zip(prompts, continuations)])
    eos = vlm.tokenizer.eos_token_id
    rows, starts = [], []
    for prompt, full, cont in zip(prompt_rows, full_rows, continuations):
        if full[:len(prompt)] == prompt:
            answer = full[len(prompt):]
        else:  # a merge across the boundary: tokenise the continuation on its own so the prompt stays exact
            answer = vlm.tokenizer(cont, add_special_tokens=False)["input_ids"]
        rows.append(prompt + answer + [eos])
        starts.append(len(prompt))
    input_ids, attention = _pad(rows, vlm.pad_token_id, left=False)
    positions = torch.arange(input_ids.shape[1])
    answer_mask = (positions[None, :] >= torch.tensor(starts)[:, None]) & attention
    return PromptTable(input_ids, attention, answer_mask, prompt_ids, prompt_mask)


def answer_nll(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Per row [B, 2]: summed next-token NLL over answer positions, and how many there are.

    Position t predicts token t+1; only targets inside `answer_mask` count, so the labels of
    prompt, image and padding positions never reach the loss, whatever they hold.
    """
    targets, keep = input_ids[:, 1:], answer_mask[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    nll = torch.where(keep, nll, torch.zeros_like(nll))
    return torch.stack([nll.sum(dim=1), keep.sum(dim=1).to(nll.dtype)], dim=1)


def token_mean(outputs: torch.Tensor) -> torch.Tensor:
    """Mean NLL per answer token over all rows of `answer_nll` outputs."""
    return outputs[:, 0].sum() / outputs[:, 1].sum().clamp(min=1)


class TeacherForced(nn.Module):
    """Images and answer-extended prompts in, per-row answer NLL out (for the engine's loop)."""

    def __init__(self, vlm: GenerativeVLM):
        super().__init__()
        self.vlm = vlm

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs["attention_mask"].bool()
        n = int(mask.sum(dim=1).max())
        ids, mask, answer = inputs["input_ids"][:, :n], mask[:, :n], inputs["answer_mask"][:, :n].bool()
        logits = self.vlm.net(input_ids=ids, attention_mask=mask.long(), **vision_inputs(self.vlm, inputs["images"])).logits
        return answer_nll(logits, ids, answer)


@torch.no_grad()
def generate(vlm: GenerativeVLM, images: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
             max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations (token ids, EOS and padding removed) of left-padded prompts, one batch."""
    keep = prompt_mask.any(dim=0)
    first = int(keep.nonzero()[0]) if keep.any() else 0
    ids, mask = prompt_ids[:, first:], prompt_mask[:, first:].long()
    device = next(vlm.parameters()).device
    # bf16 frozen weights next to fp32 trained ones (mlp/lora under bf16): autocast joins them, as in training
    mixed = any(p.dtype == torch.bfloat16 for p in vlm.parameters())
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
        out = vlm.llava.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 **vision_inputs(vlm, images.to(device)),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=vlm.pad_token_id, eos_token_id=vlm.tokenizer.eos_token_id)
    new = out[:, ids.shape[1]:].cpu()
    eos = vlm.tokenizer.eos_token_id
    rows = []
    for row in new.tolist():
        row = row[:row.index(eos)] if eos in row else row
        rows.append([t for t in row if t != vlm.pad_token_id])
    return rows


def answer_all(vlm: GenerativeVLM, images: torch.Tensor, image_index: torch.Tensor, table: PromptTable,
               max_new_tokens: int, batch_size: int) -> list[str]:
    """Generated answer text for every row, in row order, `batch_size` rows per `generate` call."""
    vlm.eval()
    answers: list[str] = []
    for start in range(0, len(image_index), batch_size):
        rows = slice(start, start + batch_size)
        ids = generate(vlm, images[image_index[rows]], table.prompt_ids[rows], table.prompt_mask[rows], max_new_tokens)
        answers += [t.strip() for t in vlm.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return answers


class AnswerObjective:
    """Token-mean NLL of the answer tokens; validation reports it and its perplexity."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_mean(outputs)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"answer_ppl": float(torch.exp(token_mean(outputs)))}
