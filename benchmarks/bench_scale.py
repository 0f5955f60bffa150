"""medvlm against a bare PyTorch loop at the zoo's real shapes: throughput, memory, start-up, studies.

Every model is the zoo's real architecture with random weights, written in its real on-disk
format into a temporary `$MEDVLM_WEIGHTS` mirror and loaded by medvlm's own loaders (no
download): clip-vit-b32 and clip-vit-b16 (open_clip local-dir), biomedclip (timm ViT-B/16 +
a BERT-base text tower, the Hub layout plus the BERT config mirror) and pmc-clip (the authors'
`checkpoint.pt` with a ModifiedResNet-50 and BERT-base), all at 224 px.

Per model: zero-shot classification, linear-probe feature extraction, and one training epoch
(train + validation pass) with partial, full and LoRA. medvlm's side runs the real engine
(`fit`: Accelerate, checkpoints, best-epoch weights, async MLflow logging into SQLite, the
per-epoch log line); the bare side is a plain loop over the same module, data, batch size
and precision. Both run in this process, interleaved (the order alternates per repeat), and
report best and median of N. Peak memory is the process RSS sampled during each measurement
on CPU and the CUDA allocator's peak on GPU; on GPU MFU is model FLOPs (counted once with
torch's FlopCounterMode) per second over the card's dense bf16 peak.

Then, through the real CLI in subprocesses: `medvlm --help` wall time, time from the command
to the first training step, and a 5-trial linear stability study against one linear run (run
just before and just after it) and, without --quick, 5 cold runs (each with an empty feature cache).

    python benchmarks/bench_scale.py --device cpu --quick      # < 10 min on 2 cores at moderate load
    python benchmarks/bench_scale.py --device cuda             # batch 256, bf16
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
BREAST = REPO.parent / "shared" / "data" / "medmnist" / "breastmnist.npz"
MODELS = ("clip-vit-b32", "clip-vit-b16", "biomedclip", "pmc-clip")
STRATEGIES = ("partial", "full", "lora")
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
PUBMEDBERT = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


# ---------------------------------------------------------------- random-weight models in their real formats

def write_bert_repo(folder: Path) -> None:
    """A BERT-base Hub mirror (config.json + a WordPiece vocabulary): the shape of PubMedBERT/BiomedBERT."""
    from transformers import BertConfig, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "breast", "ultrasound", "image",
             "malignant", "normal", "benign", "tumor", "tissue", "or", "."] + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, max_position_embeddings=512, pad_token_id=0).save_pretrained(str(folder))


def write_open_clip(root: Path, name: str, arch: str) -> None:
    import open_clip
    from safetensors.torch import save_file

    folder = root / name
    folder.mkdir(parents=True)
    net = open_clip.create_model(arch)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": open_clip.get_model_config(arch),
        "preprocess_cfg": {"size": 224, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic"}}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))


def write_biomedclip(root: Path) -> None:
    """BiomedCLIP's Hub folder: its open_clip_config.json (timm vit_base_patch16_224 + BiomedBERT), random weights."""
    import open_clip

    write_bert_repo(root / BIOMEDBERT)
    folder = root / "biomedclip"
    write_bert_repo(folder)  # the tokenizer files the Hub repository carries
    model_cfg = {"embed_dim": 512,
                 "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                 "text_cfg": {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT, "hf_proj_type": "mlp",
                              "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}}
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}))
    build = json.loads(json.dumps(model_cfg))
    build["text_cfg"].update(hf_model_name=str(root / BIOMEDBERT), hf_model_pretrained=False)
    torch.save(open_clip.CustomTextCLIP(**build).state_dict(), folder / "open_clip_pytorch_model.bin")


def write_pmc_clip(root: Path) -> None:
    """The authors' checkpoint.pt: DDP `module.` keys, ModifiedResNet-50 (768-d) + PubMedBERT-base + projection."""
    from open_clip.modified_resnet import ModifiedResNet
    from transformers import BertConfig, BertModel

    write_bert_repo(root / PUBMEDBERT)
    visual = ModifiedResNet([3, 4, 6, 3], output_dim=768, heads=32, image_size=224, width=64)
    bert = BertModel(BertConfig.from_pretrained(str(root / PUBMEDBERT)))
    state = {**{f"visual.{k}": v for k, v in visual.state_dict().items()},
             **{f"text_encoder.{k}": v for k, v in bert.state_dict().items()},
             "text_projection": torch.randn(768, 768) * 768**-0.5, "logit_scale": torch.tensor(np.log(1 / 0.07))}
    (root / "pmc-clip").mkdir()
    torch.save({"epoch": 0, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               root / "pmc-clip" / "checkpoint.pt")


WRITERS = {"clip-vit-b32": lambda r: write_open_clip(r, "clip-vit-b32", "ViT-B-32-quickgelu"),
           "clip-vit-b16": lambda r: write_open_clip(r, "clip-vit-b16", "ViT-B-16-quickgelu"),
           "biomedclip": write_biomedclip, "pmc-clip": write_pmc_clip}


# ---------------------------------------------------------------- measuring

@dataclass
class Sizes:
    batch: int
    train: int
    val: int
    encode: int
    repeats: int
    ratio_repeats: int  # N for full and LoRA training, whose ratio to bare is an acceptance criterion
    checkpoint_probe: bool  # also time one resume-checkpoint write per training workload


@dataclass
class Row:
    model: str
    workload: str
    images: int
    batch: int
    repeats: int
    bare_s: list[float] = field(default_factory=list)
    medvlm_s: list[float] = field(default_factory=list)
    bare_mem: list[float] = field(default_factory=list)
    medvlm_mem: list[float] = field(default_factory=list)
    bare_inc: list[float] = field(default_factory=list)
    medvlm_inc: list[float] = field(default_factory=list)
    bare_cpu: list[float] = field(default_factory=list)
    medvlm_cpu: list[float] = field(default_factory=list)
    flops_per_image: float = 0.0
    checkpoint_s: float | None = None

    def summary(self, peak_tflops: float | None) -> dict:
        med_b, med_m = statistics.median(self.bare_s), statistics.median(self.medvlm_s)
        out = {"model": self.model, "workload": self.workload, "images": self.images, "batch": self.batch,
               "repeats": len(self.bare_s),
               "bare_img_s_median": self.images / med_b, "bare_img_s_best": self.images / min(self.bare_s),
               "medvlm_img_s_median": self.images / med_m, "medvlm_img_s_best": self.images / min(self.medvlm_s),
               "ratio_time_median": med_m / med_b, "ratio_time_best": min(self.medvlm_s) / min(self.bare_s),
               "ratio_cpu_median": statistics.median(self.medvlm_cpu) / statistics.median(self.bare_cpu),
               "bare_s": self.bare_s, "medvlm_s": self.medvlm_s,
               "bare_peak_mem_gb": max(self.bare_mem), "medvlm_peak_mem_gb": max(self.medvlm_mem),
               "mem_ratio": max(self.medvlm_mem) / max(self.bare_mem),
               "bare_peak_increment_gb": max(self.bare_inc), "medvlm_peak_increment_gb": max(self.medvlm_inc),
               "loadavg_1min": os.getloadavg()[0]}
        if self.checkpoint_s is not None:
            out["checkpoint_write_s"] = self.checkpoint_s
        if peak_tflops and self.flops_per_image:
            out["medvlm_mfu"] = self.flops_per_image * out["medvlm_img_s_median"] / (peak_tflops * 1e12)
            out["bare_mfu"] = self.flops_per_image * out["bare_img_s_median"] / (peak_tflops * 1e12)
        return out


def rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def release_memory() -> None:
    """Collect and hand freed heap back to the OS, so one measurement's peak does not lift the next one's floor."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


@contextmanager
def measured(device: torch.device, times: list[float], mems: list[float], incs: list[float], cpus: list[float]):
    """Wall time (device synchronised), the process's CPU time, peak memory of the block and that peak's rise
    above the floor before it.

    On a shared CPU machine the wall time of each side swings with the other users' load; the CPU time
    (all threads of this process) swings far less, but misses time spent waiting (disk, locks).

    The absolute peak includes what this process holds for every measurement (the loaded model and
    the prepared copy both sides start from); the increment is what the measured loop itself added.
    """
    release_memory()
    floor = torch.cuda.memory_allocated() / 1e9 if device.type == "cuda" else rss_gb()
    stop, peak = threading.Event(), [floor]

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_gb())

    sampler = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        stop.set()
        if device.type == "cuda":
            mems.append(torch.cuda.max_memory_allocated() / 1e9)
        else:
            sampler.join()
            mems.append(max(peak[0], rss_gb()))
        incs.append(mems[-1] - floor)


def interleaved(row: Row, device: torch.device, bare, ours) -> Row:
    for r in range(row.repeats):
        sides = [("bare", bare), ("medvlm", ours)]
        for side, fn in (sides if r % 2 == 0 else sides[::-1]):
            lists = ((row.bare_s, row.bare_mem, row.bare_inc, row.bare_cpu) if side == "bare"
                     else (row.medvlm_s, row.medvlm_mem, row.medvlm_inc, row.medvlm_cpu))
            work = fn()  # set-up (copies of the module) stays outside the timed block
            with measured(device, *lists):
                work()
            del work
    return row


def synthetic(n: int, seed: int):
    from medvlm.data.base import ArrayImages

    rng = np.random.default_rng(seed)
    return ArrayImages(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 2, n))


def batches(data, batch: int, device: torch.device, shuffle: bool = False):
    from torch.utils.data import DataLoader

    from medvlm.data.base import collate_batch

    loader = DataLoader(data, batch_size=batch, shuffle=shuffle, collate_fn=collate_batch,
                        pin_memory=device.type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def bare_train_epoch(module, train, val, batch: int, device: torch.device, precision: str, lr: float):
    """The reference: a plain loop (AdamW, autocast, cross-entropy), then one validation pass."""
    from medvlm.engine.features import autocast_for

    def work() -> None:
        module.train()
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, fused=device.type == "cuda" or None)
        for images, labels in batches(train, batch, device, shuffle=True):
            with autocast_for(device, precision):
                loss = F.cross_entropy(module(images).float(), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        module.eval()
        with torch.no_grad():
            for images, _ in batches(val, batch, device):
                with autocast_for(device, precision):
                    module(images).float().cpu()
    return work


def medvlm_train_epoch(module, train, val, cfg, tmp: Path):
    """medvlm's engine as a run uses it: fit() with checkpoints, best weights and MLflow epoch logging.

    The MLflow run and the Accelerator exist once per run, so they are made here, untimed; the
    timed part is the epoch as `fit` runs it (train, validation, logging, and the resume checkpoint
    when `checkpoint_every`, default 600 s, has passed: an epoch here is shorter, so it writes none;
    `checkpoint_write_seconds` measures that write, which a long run pays once per interval).
    """
    import mlflow

    from medvlm.engine.trainer import Checkpoints, fit, make_accelerator
    from medvlm.experiments.classification import ClassificationObjective
    from medvlm.tracking.session import log_epoch

    mlflow.end_run()
    run_id = mlflow.start_run().info.run_id
    checkpoints = Checkpoints.for_run(cfg.model_copy(update={"checkpoint_dir": str(tmp / "checkpoints")}), run_id, {})
    accelerator = make_accelerator(cfg)

    def work() -> None:
        fit(ClassificationObjective(module, "binary"), train, val, cfg, accelerator, checkpoints, log_epoch)
        mlflow.flush_async_logging()
        checkpoints.clear()
    return work


def checkpoint_write_seconds(module, cfg, tmp: Path) -> float:
    """One resume checkpoint as `fit` writes it: the trainable weights and AdamW's two moments for each."""
    from medvlm.engine.checkpoints import Checkpoints, checkpoint_identity
    from medvlm.engine.trainer import trainable_state

    weights = trainable_state(module)
    moments = {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.zeros_like(w)}
               for i, w in enumerate(weights.values())}
    checkpoints = Checkpoints(tmp / "probe", "probe", checkpoint_identity("probe", cfg.resolved(), {}))
    t0 = time.perf_counter()
    checkpoints.save({"trainable": weights, "optimizer": {"state": moments}, "epoch": 0})
    seconds = time.perf_counter() - t0
    checkpoints.clear()
    return seconds


def profile_epoch(prepared, train, val, cfg, tmp: Path, device: torch.device, rows: int = 20) -> str:
    """torch.profiler table of one medvlm epoch: where host and device time go (kernels on GPU)."""
    from torch.profiler import ProfilerActivity, profile

    work = medvlm_train_epoch(copy.deepcopy(prepared), train, val, cfg, tmp)
    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        work()
    return prof.key_averages().table(sort_by="self_cuda_time_total" if gpu else "self_cpu_time_total", row_limit=rows)


def flops_per_image(module, images: torch.Tensor, labels: torch.Tensor, train: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if train:
            F.cross_entropy(module(images).float(), labels).backward()
        else:
            with torch.no_grad():
                module(images)
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(images)


class Tiny(torch.nn.Module):
    """A few thousand parameters on the synthetic 28 px images: the engine's paths at no measurable cost."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.float().flatten(1) / 255)


def warm_up(device: torch.device, precision: str, tmp: Path) -> None:
    """One untimed epoch of each side on `Tiny`, before any measurement.

    A process pays some costs once: the first backward starts autograd's threads, the first metrics
    import scikit-learn, the first async MLflow call starts its logging thread. A run pays them once
    too (start-up is measured on its own, below); left in, they would land on whichever side of the
    first training row happens to run first.
    """
    from medvlm.config import build_config

    train, val = synthetic(8, 3), synthetic(4, 4)
    cfg = build_config({"model": "tiny", "dataset": "synthetic", "strategy": "full", "epochs": 1, "batch_size": 4,
                        "eval_batch_size": 4, "precision": precision})
    bare_train_epoch(Tiny().to(device), train, val, 4, device, precision, 1e-3)()
    medvlm_train_epoch(Tiny().to(device), train, val, cfg, tmp)()


def bench_model(name: str, sizes: Sizes, device: torch.device, precision: str, tmp: Path, report,
                profiled: frozenset[str] = frozenset()) -> None:
    from medvlm.config import build_config
    from medvlm.engine.features import autocast_for, encode_dataset, image_embedder
    from medvlm.engine.trainer import evaluate, make_accelerator
    from medvlm.experiments.classification import ClassificationObjective
    from medvlm.strategies import get_strategy
    from medvlm.tasks.classification import ImageClassifier, LinearHead, zero_shot_head
    from medvlm.zoo import create_model

    clip = create_model(name, device=device)
    train, val, enc = synthetic(sizes.train, 0), synthetic(sizes.val, 1), synthetic(sizes.encode, 2)
    head = LinearHead(clip.embed_dim, 2).to(device)
    prompts = [["a breast ultrasound image of malignant tumor."], ["a breast ultrasound image of normal tissue."]]
    head.set_zero_shot(zero_shot_head(clip, prompts, ["malignant", "normal"], "binary"))
    cfg = build_config({"model": name, "dataset": "synthetic", "strategy": "full", "epochs": 1, "patience": 1,
                        "batch_size": sizes.batch, "eval_batch_size": sizes.batch, "lr": 1e-5,
                        "precision": precision, "register_adapter": False})
    accelerator = make_accelerator(cfg)
    amp = "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision
    peak = peak_tflops(device)

    def bare_forward(module):
        """The plain loop medvlm's path is timed against: `module` on every batch, outputs to the CPU."""
        def work():
            with torch.no_grad():
                for images, _ in batches(enc, sizes.batch, device):
                    with autocast_for(device, amp):
                        module(images).float().cpu()
        return lambda: work

    # zero-shot classification: logits of every image under the prompt head
    zs = ImageClassifier(clip, head).eval()
    row = Row(name, "zeroshot", sizes.encode, sizes.batch, sizes.repeats)
    interleaved(row, device, bare_forward(zs),
                lambda: lambda: evaluate(accelerator, ClassificationObjective(zs, "binary"), enc, cfg))
    if peak:
        images, labels = next(batches(enc, sizes.batch, device))
        with autocast_for(device, amp):
            row.flops_per_image = flops_per_image(zs, images, labels, train=False)
    report(row)

    # linear probe: image features to CPU, as the feature cache stores them
    row = Row(name, "linear-features", sizes.encode, sizes.batch, sizes.repeats)
    embed = image_embedder(clip)
    interleaved(row, device, bare_forward(embed),
                lambda: lambda: encode_dataset(embed, enc, sizes.batch, device, amp))
    report(row)

    for strategy in STRATEGIES:
        run_cfg = build_config({**cfg.model_dump(), "strategy": strategy})
        prepared = ImageClassifier(get_strategy(strategy).prepare(copy.deepcopy(clip), run_cfg),
                                   copy.deepcopy(head).requires_grad_(True))
        repeats = sizes.ratio_repeats if strategy in ("full", "lora") else sizes.repeats
        row = Row(name, f"train-{strategy}", sizes.train, sizes.batch, repeats)
        interleaved(row, device,
                    lambda: bare_train_epoch(copy.deepcopy(prepared), train, val, sizes.batch, device, amp, run_cfg.lr),
                    lambda: medvlm_train_epoch(copy.deepcopy(prepared), train, val, run_cfg, tmp))
        if sizes.checkpoint_probe:
            row.checkpoint_s = checkpoint_write_seconds(prepared, run_cfg, tmp)
            release_memory()
        if peak:
            module = copy.deepcopy(prepared).train()
            images, labels = next(batches(train, sizes.batch, device))
            with autocast_for(device, amp):
                row.flops_per_image = flops_per_image(module, images, labels, train=True)
            del module
        report(row)
        if f"{name}:{strategy}" in profiled:
            print(f"[{name}] profile of one medvlm {strategy} epoch\n"
                  f"{profile_epoch(prepared, train, val, run_cfg, tmp, device)}", flush=True)
        del prepared
        release_memory()
    del clip, zs
    release_memory()


def model_sizes(name: str, gpu: bool, quick: bool, repeats: int | None) -> Sizes:
    """GPU: batch 256 in bf16. CPU --quick: a few images per measurement, N = 3 only where an acceptance
    ratio needs it (full and LoRA training at ViT-B/32), N = 1 elsewhere; these rows show that every path
    runs at the real shapes and where memory goes."""
    if gpu:  # 32 steps per epoch: per-run costs (optimizer set-up, the first step's kernel selection) amortised
        return Sizes(256, 8192, 1024, 8192, repeats or 3, repeats or 3, checkpoint_probe=False)
    if not quick:
        return Sizes(32, 128, 32, 128, repeats or 3, repeats or 3, checkpoint_probe=True)
    if name == "clip-vit-b32":  # two steps per epoch: a run's fixed costs (Accelerate's prepare, the final
        # MLflow flush, ~0.05 s) are not the epoch's; at one step they were 7 % of it, at 546 images < 0.1 %
        return Sizes(8, 16, 4, 8, repeats or 1, repeats or 3, checkpoint_probe=True)
    n = 2 if name in ("clip-vit-b16", "biomedclip") else 4
    return Sizes(n, n, n, 2 * n, repeats or 1, repeats or 1, checkpoint_probe=False)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


# ---------------------------------------------------------------- the CLI in subprocesses

def cli_env(tmp: Path, weights: Path, cache: Path, tag: str) -> dict[str, str]:
    """A fresh tracking store and feature cache per measurement; nothing of this process's MLflow state leaks in."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                                                                  "MLFLOW_RUN_ID")}
    return {**inherited, "MEDVLM_WEIGHTS": str(weights), "MEDVLM_CACHE": str(cache),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/cli-{tag}.db", "MEDVLM_OPTUNA_STORAGE": f"sqlite:///{tmp}/optuna-{tag}.db",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def medvlm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "medvlm.cli", *args]


def help_seconds(runs: int = 3) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(medvlm_cmd("--help"), check=True, capture_output=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return times


def seconds_to_first_step(env: dict[str, str], data_root: Path, tmp: Path) -> float:
    """From the command to the engine's "training starts" line (logged right before the first step)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(medvlm_cmd("finetune", "--model", "clip-vit-b32", "--dataset", "breastmnist", "--size", "28",
                                       "--data_root", str(data_root), "--strategy", "full", "--epochs", "1",
                                       "--register_adapter", "false"),
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "training starts" in line:
                return time.perf_counter() - t0
        raise RuntimeError(f"finetune exited ({proc.wait()}) before its first training step")
    finally:
        proc.kill()
        proc.wait()


def timed_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(medvlm_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"medvlm {' '.join(args[:1])} failed: {out.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, out.stderr


def study_costs(weights: Path, data_root: Path, tmp: Path, trials: int = 5, cold: bool = True) -> dict:
    """A `trials`-trial linear stability study against one linear run, and (`cold`) `trials` cold linear runs.

    The load of a shared machine drifts within minutes, so one linear run goes just before the study
    and one just after it, and the study is compared with their mean.
    """
    run = ["--model", "clip-vit-b32", "--dataset", "breastmnist", "--size", "28", "--data_root", str(data_root),
           "--strategy", "linear", "--register_adapter", "false"]
    before, _ = timed_cli(["finetune", *run], cli_env(tmp, weights, tmp / "cache-before", "before"), tmp)
    study, log = timed_cli(["stability", *run, "--strategies", "linear", "--trials", str(trials), "--study", "bench"],
                           cli_env(tmp, weights, tmp / "cache-study", "study"), tmp)
    after, _ = timed_cli(["finetune", *run], cli_env(tmp, weights, tmp / "cache-after", "after"), tmp)
    one = (before + after) / 2
    out = {"linear_run_before_s": before, "linear_run_after_s": after, "one_linear_run_s": one, "study_s": study,
           "study_over_one": study / one,
           "encoding_lines": [line for line in log.splitlines() if "images (image_embedding)" in line]}
    if cold:
        out["cold_runs_s"] = sum(timed_cli(["finetune", *run], cli_env(tmp, weights, tmp / f"cache-cold{i}", f"cold{i}"),
                                           tmp)[0] for i in range(trials))
    return out


def write_breast_subset(src: Path, dst: Path, per_split: dict[str, int]) -> None:
    """The first rows of each split of BreastMNIST, in the official .npz layout (quick mode)."""
    blob = np.load(src)
    dst.mkdir(parents=True, exist_ok=True)
    np.savez(dst / "breastmnist.npz", **{f"{s}_{kind}": blob[f"{s}_{kind}"][:n]
                                          for s, n in per_split.items() for kind in ("images", "labels")})


# ---------------------------------------------------------------- main

def print_table(rows: list[dict], header: bool = True) -> None:
    """Medians of N (wall time; the best-of-N ratio in brackets; CPU time), the resume-checkpoint write, the
    1-minute load average when the row finished."""
    head = (f"{'model':13} {'workload':16} {'imgs':>5} {'bs':>4} {'N':>2} {'medvlm img/s':>13} {'bare img/s':>11} "
            f"{'time ratio (best)':>18} {'cpu ratio':>9} {'medvlm GB':>10} {'bare GB':>8} {'mem ratio':>9} {'+GB medvlm':>10} "
            f"{'+GB bare':>8} {'ckpt s':>7} {'load':>5} {'MFU':>6}")
    if header:
        print(head)
        print("-" * len(head))
    for r in rows:
        mfu = f"{r['medvlm_mfu']:.1%}" if "medvlm_mfu" in r else "-"
        ckpt = f"{r['checkpoint_write_s']:.1f}" if "checkpoint_write_s" in r else "-"
        ratio = f"{r['ratio_time_median']:.3f} ({r['ratio_time_best']:.3f})"
        print(f"{r['model']:13} {r['workload']:16} {r['images']:5d} {r['batch']:4d} {r['repeats']:2d} "
              f"{r['medvlm_img_s_median']:13.2f} {r['bare_img_s_median']:11.2f} {ratio:>18} {r['ratio_cpu_median']:9.3f} "
              f"{r['medvlm_peak_mem_gb']:10.2f} {r['bare_peak_mem_gb']:8.2f} {r['mem_ratio']:9.3f} "
              f"{r['medvlm_peak_increment_gb']:10.2f} {r['bare_peak_increment_gb']:8.2f} {ckpt:>7} "
              f"{r.get('loadavg_1min', 0):5.1f} {mfu:>6}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: a few images per measurement, N=3 only for full and LoRA training at "
                                                              "ViT-B/32, no cold linear runs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=None, help="N for best/median (default 3; quick: see model_sizes)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: models,startup,study")
    parser.add_argument("--profile", default="", help="comma list of MODEL:STRATEGY epochs to profile, e.g. clip-vit-b16:lora")
    parser.add_argument("--json", default="bench_scale.json", help="where the JSON results go")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    gpu = device.type == "cuda"
    if not gpu:
        torch.manual_seed(0)
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="medvlm-bench-scale-"))
    weights = tmp / "weights"
    os.environ.update({"MEDVLM_WEIGHTS": str(weights), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/bench.db",
                       "MEDVLM_CACHE": str(tmp / "cache")})
    import mlflow

    from medvlm.progress import setup_logging

    setup_logging()
    mlflow.set_experiment("bench-scale")
    load = os.getloadavg()
    results = {"device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)",
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "torch": torch.__version__,
               "quick": args.quick, "loadavg_start": load, "rows": []}
    print(f"device {results['device']} · torch {torch.__version__} · load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)

    def report(row: Row) -> None:
        summary = row.summary(peak_tflops(device))
        print_table([summary], header=not results["rows"])
        results["rows"].append(summary)

    models = [m for m in args.models.split(",") if m]
    if "models" not in skip:
        precision = "bf16" if gpu else "fp32"
        warm_up(device, precision, tmp)
        for name in models:
            t0 = time.perf_counter()
            WRITERS[name](weights)
            print(f"[{name}] random weights written in its real format in {time.perf_counter() - t0:.0f} s", flush=True)
            sizes = model_sizes(name, gpu, args.quick, args.repeats)
            bench_model(name, sizes, device, precision, tmp, report, frozenset(filter(None, args.profile.split(","))))
            for f in (weights / name).glob("*"):
                if name != "clip-vit-b32" and f.suffix in (".bin", ".pt", ".safetensors"):
                    f.unlink()  # keep disk use bounded; clip-vit-b32 stays for the CLI measurements

    if "startup" not in skip:
        if not (weights / "clip-vit-b32").exists():
            WRITERS["clip-vit-b32"](weights)
        results["help_s"] = help_seconds()
        print(f"medvlm --help: best {min(results['help_s']):.2f} s, median {statistics.median(results['help_s']):.2f} s",
              flush=True)
        data_root = tmp / "data"
        write_breast_subset(BREAST, data_root, {"train": 32, "val": 8, "test": 8})
        results["first_step_s"] = seconds_to_first_step(cli_env(tmp, weights, tmp / "cache-first", "first"), data_root, tmp)
        print(f"time from `medvlm finetune` to the first training step (clip-vit-b32): {results['first_step_s']:.1f} s",
              flush=True)

    if "study" not in skip:
        if not (weights / "clip-vit-b32").exists():
            WRITERS["clip-vit-b32"](weights)
        data_root = tmp / "study-data"
        if args.quick and not gpu:
            write_breast_subset(BREAST, data_root, {"train": 32, "val": 8, "test": 16})
        else:
            data_root.mkdir()
            (data_root / "breastmnist.npz").symlink_to(BREAST)
        load = os.getloadavg()[0]
        results["study"] = study_costs(weights, data_root, tmp, cold=not args.quick)
        s = results["study"]
        s["loadavg_1min"] = [load, os.getloadavg()[0]]
        cold = f"; 5 cold runs {s['cold_runs_s']:.0f} s" if "cold_runs_s" in s else ""
        print(f"5-trial linear stability study {s['study_s']:.0f} s = {s['study_over_one']:.2f}x one linear run "
              f"({s['linear_run_before_s']:.0f} s before it, {s['linear_run_after_s']:.0f} s after it){cold}; "
              f"load {load:.1f} -> {os.getloadavg()[0]:.1f}; encoding passes in the study's log: "
              f"{len(s['encoding_lines'])} line(s): {s['encoding_lines']}", flush=True)

    results["loadavg_end"] = os.getloadavg()
    print()
    print_table(results["rows"])
    print(f"load average at start {results['loadavg_start'][0]:.2f}, at end {results['loadavg_end'][0]:.2f}")
    Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
