"""Training tokens/s and peak memory per generative-VQA strategy (LLaVA family), no download needed.

On a GPU the model has the real 7B shape (CLIP ViT-L/14-336 + a Llama-2-7B or Mistral-7B decoder,
mlp2x_gelu projector) with random bf16 weights; on CPU a tiny model of the same structure. Each
strategy runs the experiment's own code path: the zoo strategy (`zeroshot`, `mlp`, `lora` with
`lora_parts`) prepares the model, `TeacherForced` computes the answer-only loss under bf16 autocast,
AdamW steps the trainable fp32 weights; `zeroshot` times greedy generation instead.

Each sequence is what a VQA-RAD row becomes: BOS, the image tokens (576 at 336 px), a prompt of
`--prompt` tokens and an answer of `--answer` tokens (+EOS). Reported per strategy: trainable
parameters, sequence tokens/s (all positions the model runs), answer tokens/s, peak memory (CUDA
allocator peak; CPU: the process's peak RSS so far) and seconds per step.

    python benchmarks/bench_llava.py                         # GPU: 7B shape, batch 8; CPU: tiny
    python benchmarks/bench_llava.py --language mistral --batch-size 16 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from medvlm.config import RunConfig
from medvlm.strategies import get_strategy
from medvlm.tasks.generative_vqa import TeacherForced, token_mean, vision_inputs
from medvlm.zoo.base import ModelSpec, Preprocess
from medvlm.zoo.llava import LLAVA_MED_TEMPLATE, LORA_PARTS, PROJECTOR, GenerativeVLM

STRATEGIES = ("zeroshot", "mlp", "lora:l", "lora:lm", "lora:vml")
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
LANGUAGE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads")
SIZES = {  # shape: (CLIP vision tower, Llama, Mistral), in the order of VISION_KEYS and LANGUAGE_KEYS
    "7b": ((1024, 4096, 24, 16, 336, 14), (32064, 4096, 11008, 32, 32, 32), (32000, 4096, 14336, 32, 32, 8)),
    "tiny": ((32, 64, 2, 2, 32, 8), (512, 64, 128, 2, 4, 4), (512, 64, 128, 2, 4, 2)),
}
SHAPES = {shape: {"vision": dict(zip(VISION_KEYS, vision), hidden_act="quick_gelu"),
                  "llama": dict(zip(LANGUAGE_KEYS, llama)), "mistral": dict(zip(LANGUAGE_KEYS, mistral))}
          for shape, (vision, llama, mistral) in SIZES.items()}
IMAGE_TOKEN, PAD, BOS, EOS = 3, 0, 1, 2


def tokenizer():
    """A real (word-level) fast tokenizer with the special ids the model needs; the benchmark feeds ids directly."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": IMAGE_TOKEN}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build(shape: str, language: str, device: torch.device, dtype: torch.dtype) -> GenerativeVLM:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

    sizes = SHAPES[shape]
    text_cls = LlamaConfig if language == "llama" else MistralConfig
    config = LlavaConfig(vision_config=CLIPVisionConfig(**sizes["vision"]).to_dict(),
                         text_config=text_cls(**sizes[language]).to_dict(), image_token_index=IMAGE_TOKEN)
    with torch.device(device):
        net = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    spec = ModelSpec(name=f"{shape}-{language}", source="random", partial=[PROJECTOR],
                     lora_parts={k: dict(v) for k, v in LORA_PARTS.items()})
    side = sizes["vision"]["image_size"]
    n_image = (side // sizes["vision"]["patch_size"]) ** 2
    preprocess = Preprocess(image_size=side, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return GenerativeVLM(net.eval(), tokenizer(), spec, preprocess, LLAVA_MED_TEMPLATE, IMAGE_TOKEN, n_image)


def batch(vlm: GenerativeVLM, size: int, prompt: int, answer: int, vocab: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(4, vocab, (size, prompt + answer), generator=gen)
    ids = torch.cat([torch.full((size, 1), BOS), torch.full((size, vlm.image_tokens), IMAGE_TOKEN), text,
                     torch.full((size, 1), EOS)], dim=1)
    answer_mask = torch.zeros_like(ids, dtype=torch.bool)
    answer_mask[:, -(answer + 1):] = True
    side = vlm.preprocess.image_size
    images = torch.randint(0, 256, (size, 3, side, side), dtype=torch.uint8, generator=gen)
    return {k: v.to(device) for k, v in {"images": images, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                                         "answer_mask": answer_mask}.items()}


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_strategy(vlm: GenerativeVLM, name: str, inputs: dict, args, device: torch.device) -> dict:
    strategy, _, parts = name.partition(":")
    cfg = RunConfig(model="bench", dataset="bench", task="vqa", strategy=strategy, lora_parts=parts,
                    lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    vlm = get_strategy(strategy).prepare(vlm, cfg)
    for p in vlm.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    trainable = sum(p.numel() for p in vlm.parameters() if p.requires_grad)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    size, seq = inputs["input_ids"].shape
    if strategy == "zeroshot":
        prompt = {k: inputs[k][:, :-(args.answer + 1)] for k in ("input_ids", "attention_mask")}
        images = vision_inputs(vlm, inputs["images"])

        def step() -> None:
            with torch.no_grad(), autocast:
                vlm.llava.generate(**prompt, **images, max_new_tokens=args.new_tokens, do_sample=False,
                                   min_new_tokens=args.new_tokens, pad_token_id=PAD, eos_token_id=EOS)
        tokens, answer_tokens = size * (prompt["input_ids"].shape[1] + args.new_tokens), size * args.new_tokens
    else:
        if args.gradient_checkpointing:
            vlm.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module = TeacherForced(vlm).train()
        optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-5)

        def step() -> None:
            with autocast:
                loss = token_mean(module(inputs))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        tokens, answer_tokens = size * seq, int(inputs["answer_mask"].sum())
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    result = {"strategy": name, "trainable_params": trainable, "batch": size, "seq_len": seq,
              "tokens_per_s": round(tokens / seconds, 1), "answer_tokens_per_s": round(answer_tokens / seconds, 1),
              "peak_memory_gb": round(peak_memory_gb(device), 2), "s_per_step": round(seconds, 4),
              "gradient_checkpointing": bool(args.gradient_checkpointing and strategy != "zeroshot")}
    if hasattr(vlm.net, "unload"):
        vlm.net = vlm.net.unload()  # back to the plain model for the next strategy
    if args.gradient_checkpointing:
        vlm.llava.gradient_checkpointing_disable()
    for p in vlm.parameters():
        p.requires_grad_(False)
        p.data = p.data.to(args.dtype)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: 7b on GPU, tiny on CPU")
    parser.add_argument("--language", choices=("llama", "mistral"), default="llama")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on GPU, 4 on CPU")
    parser.add_argument("--prompt", type=int, default=40, help="prompt tokens besides the image tokens")
    parser.add_argument("--answer", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16, help="zeroshot: tokens generated per row")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = args.shape or ("7b" if device.type == "cuda" else "tiny")
    args.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = args.batch_size or (8 if device.type == "cuda" else 4)
    vlm = build(shape, args.language, device, args.dtype)
    print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "shape": shape,
                      "language": args.language, "params": sum(p.numel() for p in vlm.parameters()),
                      "weights_gb": round(sum(p.numel() * p.element_size() for p in vlm.parameters()) / 2**30, 2)}))
    inputs = batch(vlm, size, args.prompt, args.answer, SHAPES[shape][args.language]["vocab_size"], device)
    for name in args.strategies.split(","):
        print(json.dumps(run_strategy(vlm, name, inputs, args, device)), flush=True)


if __name__ == "__main__":
    main()
