"""GPU hours a study spec needs, estimated from counted FLOPs (no GPU needed to run this).

For every run of the spec (its dry-run plan) the estimate adds up the training image and text passes
and the evaluation passes, each weighted by the forward FLOPs of the run's model at its real shape,
which `torch.utils.flop_counter.FlopCounterMode` counts once on CPU (random weights, real
architectures: open_clip ViT-B/32, ViT-B/16, ModifiedResNet-50, torchvision ResNet-50, a BERT-base
text tower where the model has one). Then hours = FLOPs / (GPU peak x utilisation).

Assumptions (printed with the result; change them with the flags):
- a training pass costs 3x the forward FLOPs under `full`, 2x under `lora` (activation gradients,
  no frozen-weight gradients) and 1x under `partial` (only the projections get gradients);
- every epoch evaluates the validation split once (forward) and the test split is evaluated once;
- the prompt classifier encodes every class prompt once per training step (forward + backward) and
  once per evaluation pass; retrieval encodes one caption per pair, VQA one question per QA pair;
- runs stop early after `--epochs` epochs on average (the protocol's cap, 200, gives the ceiling);
- split sizes: MedMNIST's official counts; ROCO's test split as shipped (8,179 radiology and 612
  non-radiology captions) and train/validation as 8x/1x of it (its 80/10/10 split); VQA-RAD's 2,248
  QA pairs split 201/51/62 by image; SLAKE English 4,919/1,053/1,061.

    python benchmarks/estimate_gpu_hours.py sweeps/midl2026.yaml sweeps/stability.yaml sweeps/ablation-organ.yaml
"""

from __future__ import annotations

import argparse
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from medvlm.config import RunConfig
from medvlm.studies.plan import build_plan
from medvlm.studies.spec import load_study_config

SPLITS = {  # (train, val, test) samples: images (classification), captions (retrieval), QA pairs (VQA)
    "pneumoniamnist": (4708, 524, 624), "breastmnist": (546, 78, 156),
    "organamnist": (34561, 6491, 17778), "organcmnist": (12975, 2392, 8216),
    ("roco", "radiology"): (8 * 8179, 8179, 8179), ("roco", "non-radiology"): (8 * 612, 612, 612),
    ("roco", "mixed"): (8 * 8791, 8791, 8791),
    "vqa_rad": (round(2248 * 201 / 314), round(2248 * 51 / 314), round(2248 * 62 / 314)),
    "slake": (4919, 1053, 1061),
}
CLASSES = {"pneumoniamnist": 2, "breastmnist": 2, "organamnist": 11, "organcmnist": 11}
# image tower and text tower (name, context length) of each paper model, at the real shapes
TOWERS = {"clip-vit-b32": ("ViT-B-32-quickgelu", ("clip", 77)), "biomedclip": ("ViT-B-16", ("bert", 256)),
          "pmc-clip": ("RN50", ("bert", 77)), "cxr-clip": ("resnet50", ("bert", 256))}
BACKWARD = {"full": 3.0, "lora": 2.0, "partial": 1.0}


def flops_of(fn) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


@cache
def image_flops(arch: str) -> float:
    """Forward FLOPs of one 224x224 image through the image tower."""
    if arch == "resnet50":
        import torchvision

        net = torchvision.models.resnet50(num_classes=512)
        return flops_of(lambda: net(torch.zeros(1, 3, 224, 224)))
    import open_clip

    net = open_clip.create_model(arch).visual.eval()
    return flops_of(lambda: net(torch.zeros(1, 3, 224, 224)))


@cache
def text_flops(kind: str, length: int) -> float:
    """Forward FLOPs of one text padded to the model's context length."""
    if kind == "bert":
        from transformers import BertConfig, BertModel

        net = BertModel(BertConfig()).eval()  # BERT-base: PubMedBERT, BiomedBERT and Bio_ClinicalBERT's shape
        return flops_of(lambda: net(torch.zeros(1, length, dtype=torch.long)))
    import open_clip

    net = open_clip.create_model("ViT-B-32-quickgelu").eval()
    return flops_of(lambda: net.encode_text(torch.zeros(1, length, dtype=torch.long)))


def run_flops(cfg: RunConfig, epochs: int) -> float:
    """Training plus evaluation FLOPs of one run."""
    image_arch, text = TOWERS[cfg.model]
    image, txt = image_flops(image_arch), text_flops(*text)
    key = (cfg.dataset, cfg.subset) if cfg.task == "retrieval" else cfg.dataset
    train, val, test = SPLITS[key]
    train = round(train * cfg.train_fraction)
    if cfg.subsample_val:
        val = round(val * cfg.train_fraction)
    prompts = CLASSES.get(cfg.dataset, 0) * (1 if cfg.prompt_set == "paper" else 4)
    per_sample = image + (txt if cfg.task != "classification" else 0.0)
    evaluate = lambda n: n * per_sample + prompts * txt  # noqa: E731 - one evaluation pass over n samples
    if cfg.strategy == "zeroshot":
        return evaluate(test)
    steps = -(-train // cfg.batch_size)
    step_text = prompts * txt if cfg.task == "classification" and cfg.head == "prompt" else 0.0
    training = BACKWARD[cfg.strategy] * (train * per_sample + steps * step_text)
    return epochs * (training + evaluate(val)) + evaluate(test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--epochs", type=int, default=30, help="average epochs a run trains before early stopping")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--utilisation", type=float, default=0.3, help="fraction of the peak sustained")
    args = parser.parse_args(argv)
    rate = args.peak_tflops * 1e12 * args.utilisation
    print(f"assumed: {args.epochs} epochs per run on average (cap 200), {args.peak_tflops:g} TFLOP/s peak x "
          f"{args.utilisation:g} utilisation")
    print("| spec | runs | PFLOPs | GPU hours | GPU hours if every run used 200 epochs |")
    print("|---|---|---|---|---|")
    for spec in args.specs:
        study = load_study_config("sweep", spec, {})
        plan = build_plan(study, {})
        typical = sum(run_flops(t.config, min(args.epochs, t.config.epochs)) for t in plan)
        ceiling = sum(run_flops(t.config, t.config.epochs) for t in plan)
        print(f"| {spec} | {len(plan)} | {typical / 1e15:,.0f} | {typical / rate / 3600:,.1f} | "
              f"{ceiling / rate / 3600:,.1f} |")


if __name__ == "__main__":
    main()
