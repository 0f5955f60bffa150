"""Throughput of medvlm's finetune and zeroshot paths as a ratio against a bare PyTorch loop.

Same model, same data, same precision, same batch size; medvlm's side runs the real engine
(Accelerate, async MLflow logging into a SQLite store, early-stopping bookkeeping) and the
real feature encoder. A ratio near 1.0 means the platform adds no overhead.

    python benchmarks/bench_throughput.py                     # tiny model, CPU or GPU
    python benchmarks/bench_throughput.py --image-size 224 --n 4096 --batch-size 128   # ViT-sized input on a GPU
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medvlm.config import build_config
from medvlm.data.base import ArrayImages, collate_batch
from medvlm.data.transforms import to_model_input
from medvlm.engine.features import autocast_for, encode_dataset, image_embedder
from medvlm.engine.trainer import fit, make_accelerator
from medvlm.tasks.classification import ClassificationObjective
from medvlm.tasks.classification import ImageClassifier, LinearHead
from medvlm.testing import save_tiny_open_clip
from medvlm.tracking.session import log_epoch
from medvlm.zoo import create_model


def synthetic(n: int, seed: int = 0) -> ArrayImages:
    rng = np.random.default_rng(seed)
    return ArrayImages(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 2, n))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_train(model: ImageClassifier, data: ArrayImages, epochs: int, batch_size: int, lr: float,
               device: torch.device, precision: str) -> float:
    """The reference: a plain loop over the same tensors, no framework."""
    model = model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate_batch)
    seen, elapsed = 0, 0.0
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast_for(device, precision):
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            seen += len(labels)
        sync(device)
        elapsed += time.perf_counter() - t0
    return seen / elapsed


def bare_encode(clip, data: ArrayImages, batch_size: int, device: torch.device, precision: str) -> float:
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_batch)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            with autocast_for(device, precision):
                clip.encode_image(to_model_input(images.to(device), clip.preprocess)).float().cpu()
    sync(device)
    return len(data) / (time.perf_counter() - t0)


def medvlm_encode(clip, data: ArrayImages, batch_size: int, device: torch.device, precision: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    encode_dataset(image_embedder(clip), data, batch_size, device, precision)
    sync(device)
    return len(data) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32, help="tiny model input size (224 = ViT-B size)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each measurement")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="medvlm-bench-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    model_dir = save_tiny_open_clip(f"{tmp}/tiny", image_size=args.image_size)
    cfg = build_config({"model": f"local-dir:{model_dir}", "dataset": "synthetic", "strategy": "full",
                        "epochs": args.epochs, "patience": args.epochs, "batch_size": args.batch_size,
                        "eval_batch_size": args.batch_size, "lr": 1e-4, "precision": args.precision})
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    train, val = synthetic(args.n), synthetic(max(args.n // 8, args.batch_size), seed=1)
    clip = create_model(cfg.model, device=device)
    base = ImageClassifier(clip, LinearHead(clip.embed_dim, 2)).to(device)
    precision = "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision

    torch.manual_seed(0)
    bare_fit = max(bare_train(copy.deepcopy(base), train, args.epochs, args.batch_size, cfg.lr, device, precision)
                   for _ in range(args.repeats))
    mlflow.set_experiment("bench")
    medvlm_fit = 0.0
    for _ in range(args.repeats):
        with mlflow.start_run():
            result = fit(ClassificationObjective(copy.deepcopy(base), "binary"), train, val, cfg,
                         make_accelerator(cfg), on_epoch=log_epoch)
            mlflow.flush_async_logging()
        medvlm_fit = max(medvlm_fit, result.images_per_s)

    bare_zs = max(bare_encode(clip, train, args.batch_size, device, precision) for _ in range(args.repeats))
    medvlm_zs = max(medvlm_encode(clip, train, args.batch_size, device, precision) for _ in range(args.repeats))

    print(f"device={device} precision={precision} n={args.n} image_size={args.image_size} batch={args.batch_size} "
          f"epochs={args.epochs}")
    print(f"{'path':10} {'medvlm img/s':>14} {'bare img/s':>12} {'ratio':>7}")
    for name, ours, ref in (("finetune", medvlm_fit, bare_fit), ("zeroshot", medvlm_zs, bare_zs)):
        print(f"{name:10} {ours:14.1f} {ref:12.1f} {ours / ref:7.2f}")


if __name__ == "__main__":
    main()
