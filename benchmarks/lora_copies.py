"""Count the dtype/layout copies (`aten._to_copy`, `aten.copy_`) in one bf16-autocast training step.

Full fine-tuning against LoRA on open_clip ViT-B/16's visual tower at 224 px, random weights, on
the CPU: a count that does not depend on the machine's load, for the copies the GPU profile showed.

    python benchmarks/lora_copies.py --batch 4
"""

from __future__ import annotations

import argparse

import open_clip
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medvlm.strategies.lora import apply_lora, lora_target_regex


class CopyCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls, self.bytes = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            tensor = out if isinstance(out, torch.Tensor) else args[0]
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
        return out


def train_step(model: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(images).float().square().mean()
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224)
    for strategy in ("full", "lora"):
        model = open_clip.create_model("ViT-B-16-quickgelu").visual
        if strategy == "lora":
            targets = lora_target_regex([""], ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"])
            model = apply_lora(model, targets, r=args.rank, alpha=2 * args.rank, dropout=0.0)
        train_step(model, images)  # the counted step is not the first
        with CopyCounter() as counter:
            train_step(model, images)
        print(f"{strategy}: {counter.calls} copies, {counter.bytes / 1e6:.1f} MB copied")


if __name__ == "__main__":
    main()
