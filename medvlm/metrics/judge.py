"""An optional local LLM judge for open answers, scoring 1-100 on the paper's rubric.

*Can Common VLMs Rival Medical VLMs?* scores open answers with GPT-4 on helpfulness, relevance, accuracy and level
of detail. Here any local transformers chat model (a folder, a `$MEDVLM_WEIGHTS` mirror or an
`hf:` id; `trust_remote_code` off) plays the judge: one chat turn per open question with the
question, the reference answer and the model's answer, greedy decoding, and the first integer in
1..100 of its reply as the score. Replies without one are counted (`judge_unparsed`), never guessed.
It is off by default; the run's `judge` parameter and `medvlm.judge` tag record which model judged.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medvlm.errors import ModelError
from medvlm.network import clipped
from medvlm.zoo.checkpoints import hub_source

RUBRIC = (
    "You are a helpful and precise assistant for checking the quality of an answer to a question about a "
    "medical image. Rate the assistant's answer against the reference answer for its helpfulness, relevance, "
    "accuracy and level of detail, as one overall score from 1 to 100, where a higher score means better "
    "overall performance. Reply with the score only.\n\n"
    "Question: {question}\nReference answer: {reference}\nAssistant's answer: {prediction}"
)
MAX_REPLY_TOKENS = 8


def parse_score(reply: str) -> float | None:
    """The first integer 1..100 in the reply ("Score: 85/100" -> 85), else None."""
    for number in re.findall(r"\d+", reply):
        if 1 <= int(number) <= 100:
            return float(number)
    return None


def load_judge(name: str):
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ident = hub_source(name.removeprefix("hf:"))
    local = Path(ident).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(ident, local_files_only=local, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(ident, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load judge model '{name}' ({clipped(str(exc), 160)}); pass judge= a local "
                         f"transformers chat model folder (or mirror it under $MEDVLM_WEIGHTS), or leave judge empty") from None
    if not tokenizer.chat_template:
        raise ModelError(f"judge model '{name}' has no chat template; use an instruction-tuned chat model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.eval()


@torch.no_grad()
def judge_open_answers(name: str, test: pd.DataFrame, predictions: list[str], batch_size: int = 8) -> dict[str, float]:
    """`judge_score` (mean over parsed open answers; NaN when none parsed) and `judge_unparsed`."""
    tokenizer, model = load_judge(name)
    open_rows = np.flatnonzero(~test["closed"].to_numpy(bool))
    texts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": RUBRIC.format(question=test["question"].iloc[i], reference=test["answer"].iloc[i],
                                                   prediction=predictions[i])}],
        tokenize=False, add_generation_prompt=True) for i in open_rows]
    scores: list[float | None] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, max_new_tokens=MAX_REPLY_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        replies = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        scores += [parse_score(r) for r in replies]
    parsed = [s for s in scores if s is not None]
    return {"judge_score": float(np.mean(parsed)) if parsed else float("nan"),
            "judge_unparsed": float(len(scores) - len(parsed))}
