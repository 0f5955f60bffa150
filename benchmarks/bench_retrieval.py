"""Chunked retrieval memory: recall@k on an N x N gallery without materialising N x N scores.

A 50k x 50k gallery of random unit vectors (texts = their images plus noise, so recall is neither
zero nor one) goes through `medvlm.metrics.retrieval.retrieval_metrics`. The figure reported is
the peak *extra* memory while it runs, against the N^2 float32 score matrix a naive
implementation would build (50k^2 x 4 B = 10 GB).

How memory is measured (tracemalloc does not see torch's allocations):
- CPU: the process's peak resident set size (`ru_maxrss`) after the call minus the resident set
  size just before it. The embeddings are generated in place, chunk by chunk, so nothing before
  the call raises the peak above the resident size (the script checks that and says so if not),
  and a small warm-up call first pages in the kernels and thread pools, which RSS counts too.
  RSS also counts what glibc's allocator keeps after torch frees it: buffers that its dynamic
  mmap threshold (raised by earlier frees, up to 32 MiB) puts on the heap can stay there
  fragmented, so RSS can grow past the live tensors depending on allocation history (seen once
  at chunk 256, N = 50k, after a warm-up at that chunk size: 2.4 GiB instead of ~0.2 GiB).
  `MALLOC_MMAP_THRESHOLD_=1048576` fixes the threshold and shows the live figure. The script
  prints the RSS still held after the call as well.
  Large torch buffers are mmap-backed and returned to the OS when freed, so RSS follows them.
- CUDA: `torch.cuda.max_memory_allocated()` after the call minus the allocation before it.

Ranks of a random sample of queries are recomputed directly (one query row at a time, full
gallery) and must equal the chunked ones.

    python benchmarks/bench_retrieval.py                       # 50k x 50k, dim 128, chunks of 1024
    python benchmarks/bench_retrieval.py --chunk-size 256 --dim 512 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import psutil
import torch

from medvlm.metrics.retrieval import retrieval_metrics

MIB = 2**20


def unit_vectors(n: int, dim: int, device: torch.device, seed: int, noise_of: torch.Tensor | None = None,
                 noise: float = 2.5, block: int = 4096) -> torch.Tensor:
    """N random unit vectors (or `noise_of` plus Gaussian noise, normalised), built block by block in place."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(n, dim, device=device)
    for start in range(0, n, block):
        rows = out[start:start + block]
        rows.normal_(generator=g)
        if noise_of is not None:
            rows.mul_(noise / dim**0.5).add_(noise_of[start:start + block])
        rows.div_(rows.norm(dim=1, keepdim=True))
    return out


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def direct_ranks(query: torch.Tensor, gallery: torch.Tensor, positive_of: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rank of each sampled query's positive, one query at a time: 1 + #non-positives scoring >= it."""
    ranks = []
    for q in rows.tolist():
        scores = gallery @ query[q]
        best = scores[positive_of[q]]
        others = torch.ones(len(gallery), dtype=torch.bool, device=gallery.device)
        others[positive_of[q]] = False
        ranks.append(1 + int((scores[others] >= best).sum()))
    return torch.tensor(ranks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--noise", type=float, default=2.5, help="text = image + noise * N(0, I/dim), normalised")
    parser.add_argument("--check", type=int, default=256, help="queries whose ranks are recomputed directly")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    images = unit_vectors(args.n, args.dim, device, seed=0)
    texts = unit_vectors(args.n, args.dim, device, seed=1, noise_of=images, noise=args.noise)
    pairs = torch.arange(args.n, device=device)
    warm = min(args.n, 512)  # page in the kernels and thread pools first (RSS counts code too), with tiny buffers
    retrieval_metrics(images[:warm], texts[:warm], pairs[:warm], chunk_size=128)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = psutil.Process().memory_info().rss
        earlier_peak = peak_rss_bytes()

    t0 = time.perf_counter()
    result = retrieval_metrics(images, texts, pairs, ks=(1, 5, 10), chunk_size=args.chunk_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        extra, how = torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated delta"
    else:
        extra, how = peak_rss_bytes() - before, "peak RSS (ru_maxrss) minus RSS before"
        how += f"; RSS still held after the call: {(psutil.Process().memory_info().rss - before) / MIB:.0f} MiB"
        if earlier_peak > before + 16 * MIB:
            how += f" (lower bound: the peak before the call was already {(earlier_peak - before) / MIB:.0f} MiB higher)"

    sample = torch.randperm(args.n, generator=torch.Generator().manual_seed(0))[:args.check]
    i2t_ok = torch.equal(direct_ranks(images, texts, pairs, sample), result.i2t_ranks[sample])
    t2i_ok = torch.equal(direct_ranks(texts, images, pairs, sample), result.t2i_ranks[sample])

    naive = args.n * args.n * 4
    embeddings = (images.numel() + texts.numel()) * 4
    print(f"gallery {args.n} x {args.n}, dim {args.dim}, chunk {args.chunk_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print("  " + "  ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    print(f"  time {seconds:.1f} s (both directions)")
    print(f"  peak extra memory {extra / MIB:.0f} MiB  [{how}]")
    print(f"  = {extra / naive:.2%} of one N x N float32 score matrix ({naive / MIB:.0f} MiB); "
          f"embeddings themselves {embeddings / MIB:.0f} MiB; "
          f"expected ~ chunk x N x 10 B = {args.chunk_size * args.n * 10 / MIB:.0f} MiB")
    print(f"  ranks of {args.check} sampled queries equal a direct recomputation: "
          f"image->text {i2t_ok}, text->image {t2i_ok}")
    if not (i2t_ok and t2i_ok):
        raise SystemExit("chunked ranks differ from the direct recomputation")


if __name__ == "__main__":
    main()
