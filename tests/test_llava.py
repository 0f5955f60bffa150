"""LLaVA family on tiny models in the real formats: strict LLaVA-Med mapping, LoRA part exactness,
the answer-only loss mask against both chat templates, and batched == one-by-one greedy generation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from medvlm.config import build_config
from medvlm.errors import ModelError
from medvlm.strategies import get_strategy
from medvlm.tasks.generative_vqa import (TeacherForced, answer_all, answer_nll, build_prompts, generate, token_mean,
                                         vision_inputs)
from medvlm.zoo.factory import create_model, is_generative, load_vlm
from medvlm.zoo.llava import LORA_PARTS
from tests.llava_tiny import llava_family, write_llava_med  # noqa: F401  (fixture)

QUESTIONS = ["Is there a fracture?", "What organ is shown in this image of the chest?", "Where?",
             "Is the lesion on the left side of the brain?"]
ANSWERS = ["yes", "lung", "left temporal lobe", "no"]


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def batch(vlm, table):
    return {"images": images(), "input_ids": table.input_ids, "attention_mask": table.attention_mask,
            "answer_mask": table.answer_mask}


def test_llava_med_release_maps_every_tensor_strictly(llava_family):
    root = llava_family["root"]
    vlm = load_vlm("llava-med")
    release = load_file(str(root / "llava-med" / "model.safetensors"))
    net = dict(vlm.net.state_dict())
    renames = {"model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
               "model.mm_projector.2.": "model.multi_modal_projector.linear_2.",
               "model.vision_tower.vision_tower.": "model.vision_tower.", "lm_head.": "lm_head."}
    mapped = set()
    for key, value in release.items():
        new = next((n + key[len(o):] for o, n in renames.items() if key.startswith(o)),
                   "model.language_model." + key[len("model."):])
        assert torch.equal(net[new], value), key
        mapped.add(new)
    assert mapped == set(net)  # every parameter came from the release: none random, none left over
    cfg = vlm.llava.config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (-2, "default")
    assert vlm.image_token_id == vlm.tokenizer.unk_token_id and vlm.image_tokens == 16
    assert vlm.render("Is it?") == "[INST] <image>\nIs it? [/INST]"
    assert vlm.pad == (122, 116, 104)  # LLaVA's expand2square background for CLIP's mean
    assert is_generative("llava-med") and is_generative(llava_family["hf"]) and not is_generative("clip-vit-b32")

    # image features: the release's CLIP layer -2 patch states through mm_projector (Linear, GELU, Linear)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = CLIPVisionModel(CLIPVisionConfig.from_pretrained(root / "openai" / "clip-vit-large-patch14-336"))
    tower.load_state_dict({k[len("model.vision_tower.vision_tower."):]: v for k, v in release.items()
                           if k.startswith("model.vision_tower.")})
    pixel_values = vision_inputs(vlm, images(2))["pixel_values"]
    states = tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
    expected = F.linear(F.gelu(F.linear(states, release["model.mm_projector.0.weight"], release["model.mm_projector.0.bias"])),
                        release["model.mm_projector.2.weight"], release["model.mm_projector.2.bias"])
    with torch.no_grad():
        got = torch.stack(vlm.llava.get_image_features(pixel_values).pooler_output)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pad_to_square_keeps_the_whole_image(tmp_path):
    from PIL import Image

    from medvlm.data.sources import decode_image

    Image.new("RGB", (40, 10), (255, 255, 255)).save(tmp_path / "wide.png")  # 15 rows of padding above and below
    padded = decode_image(tmp_path / "wide.png", 8, pad=(122, 116, 104))
    assert padded.shape == (3, 8, 8)
    assert padded[:, 0].tolist() == [[122] * 8, [116] * 8, [104] * 8] == padded[:, 7].tolist()
    assert (padded[:, 3:5].float().mean() > padded[:, 0].float().mean() + 50)  # the white band in the middle
    assert (decode_image(tmp_path / "wide.png", 8) >= 250).all()  # the default centre crop sees only white


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_llava_med_refuses_a_checkpoint_that_does_not_match(llava_family, tmp_path, monkeypatch, change):
    write_llava_med(tmp_path, drop="model.mm_projector.2.bias" if change == "drop" else None)
    if change == "extra":
        path = tmp_path / "llava-med" / "model.safetensors"
        state = load_file(str(path))
        state["model.mm_projector.4.weight"] = torch.zeros(2)
        save_file(state, str(path))
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    with pytest.raises(ModelError, match="does not match the checkpoint"):
        load_vlm("llava-med")


def test_zoo_name_reads_the_mirror_and_pins_the_folder(llava_family, tmp_path, monkeypatch):
    (tmp_path / "llava-1.5-7b").symlink_to(llava_family["hf"])
    monkeypatch.setenv("MEDVLM_WEIGHTS", str(tmp_path))
    vlm = load_vlm("llava-1.5-7b")
    assert vlm.spec.pin["model"] == str((tmp_path / "llava-1.5-7b").resolve()) and len(vlm.spec.pin["sha256"]) == 64
    assert vlm.render("Is it?") == "USER: <image>\nIs it? ASSISTANT:"
    with pytest.raises(ModelError, match="not a LLaVA-family"):
        load_vlm("clip-vit-b32")
    with pytest.raises(ModelError, match="generative LLaVA-family model"):
        create_model("llava-1.5-7b")


@pytest.mark.parametrize("parts", ["v", "l", "m", "vm", "lm", "vml"])
def test_lora_forward_is_the_manual_merge_for_each_part_selection(llava_family, parts):
    cfg = build_config({"task": "vqa", "model": llava_family["hf"], "dataset": "vqa_rad", "strategy": "lora",
                        "lora_parts": parts, "lora_r": 4, "lora_alpha": 8})
    vlm = get_strategy("lora").prepare(load_vlm(llava_family["hf"]), cfg)
    reference = load_vlm(llava_family["hf"]).llava
    gen = torch.Generator().manual_seed(1)
    adapted = set()
    with torch.no_grad():
        for name, module in vlm.net.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape, generator=gen))
                path = name.removeprefix("base_model.model.")
                delta = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
                reference.get_submodule(path).weight += delta
                adapted.add(next(p for p in parts if path.startswith(LORA_PARTS[p]["prefix"])))
    assert adapted == set(parts)
    assert all(p.requires_grad == ("lora_" in n) for n, p in vlm.net.named_parameters())
    table = build_prompts(vlm, QUESTIONS, ANSWERS)
    args = {"input_ids": table.input_ids, "attention_mask": table.attention_mask.long(),
            **vision_inputs(vlm, images())}
    with torch.no_grad():
        torch.testing.assert_close(vlm.net(**args).logits, reference(**args).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(vlm.net(**args).logits, load_vlm(llava_family["hf"]).net(**args).logits, atol=1e-3)


@pytest.mark.parametrize("family", ["hf", "med", "next"])
def test_loss_counts_answer_tokens_only_and_the_mask_follows_the_chat_template(llava_family, family):
    vlm = load_vlm(llava_family[family])
    table = build_prompts(vlm, QUESTIONS, ANSWERS)
    prompts = vlm.encode([vlm.render(q) for q in QUESTIONS])
    for i, (prompt, answer) in enumerate(zip(prompts, ANSWERS)):
        ids, mask = table.input_ids[i][table.attention_mask[i]].tolist(), table.answer_mask[i]
        assert ids[:len(prompt)] == prompt  # training starts with exactly the generation prompt
        assert int(mask.nonzero()[0]) == len(prompt) and int(mask.sum()) == len(ids) - len(prompt)
        answered = vlm.tokenizer.decode(table.input_ids[i][mask])
        assert answered == vlm.render(QUESTIONS[i], answer)[len(vlm.render(QUESTIONS[i])):] + vlm.tokenizer.eos_token
        kept = table.prompt_ids[i][table.prompt_mask[i]].tolist()
        assert kept == prompt and table.prompt_mask[i][-1]  # left padding: the prompt ends in the last column

    with torch.no_grad():
        logits = vlm.net(input_ids=table.input_ids, attention_mask=table.attention_mask.long(),
                         **vision_inputs(vlm, images())).logits
    loss = token_mean(answer_nll(logits, table.input_ids, table.answer_mask))
    scrambled = table.input_ids.clone()
    outside = ~table.answer_mask
    scrambled[outside] = torch.randint(0, len(vlm.tokenizer), (int(outside.sum()),))
    assert token_mean(answer_nll(logits, scrambled, table.answer_mask)) == loss  # prompt labels never count
    changed = table.input_ids.clone()
    first = int(table.answer_mask[0].nonzero()[0])
    changed[0, first] = (changed[0, first] + 1) % len(vlm.tokenizer)
    assert token_mean(answer_nll(logits, changed, table.answer_mask)) != loss
    targets = table.input_ids[:, 1:][table.answer_mask[:, 1:]]
    direct = F.cross_entropy(logits[:, :-1][table.answer_mask[:, 1:]], targets)
    torch.testing.assert_close(loss, direct)
    torch.testing.assert_close(token_mean(TeacherForced(vlm)(batch(vlm, table))), direct, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["hf", "med", "next"])
def test_batched_greedy_generation_equals_one_by_one(llava_family, family):
    vlm = load_vlm(llava_family[family])
    if family == "next":  # any-resolution: a base view plus tiles and row newlines, more than one view's 16 tokens
        assert vlm.image_processor is not None and vlm.image_tokens > 16
    table = build_prompts(vlm, QUESTIONS)
    assert len(set(table.prompt_mask.sum(dim=1).tolist())) > 1  # prompts of different lengths: real padding
    index = torch.arange(4)
    together = generate(vlm, images(), table.prompt_ids, table.prompt_mask, 6)
    alone = [generate(vlm, images()[i:i + 1], table.prompt_ids[i:i + 1], table.prompt_mask[i:i + 1], 6)[0]
             for i in range(4)]
    assert together == alone and all(0 < len(r) <= 6 for r in together)
    assert answer_all(vlm, images(), index, table, 6, 3) == answer_all(vlm, images(), index, table, 6, 1)


def test_generation_settings_are_recorded_in_the_config():
    cfg = build_config({"task": "vqa", "model": "llava-med", "dataset": "vqa_rad", "strategy": "lora",
                        "lora_parts": "vml", "max_new_tokens": "12"})
    assert json.loads(cfg.model_dump_json())["max_new_tokens"] == 12
    with pytest.raises(Exception, match="lora_parts"):
        build_config({"task": "vqa", "model": "llava-med", "dataset": "vqa_rad", "strategy": "mlp", "lora_parts": "v"})
    with pytest.raises(Exception, match="mlp"):
        build_config({"task": "classification", "model": "llava-med", "dataset": "breastmnist", "strategy": "mlp"})


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(llava_family):
    cfg = build_config({"task": "vqa", "model": llava_family["hf"], "dataset": "vqa_rad", "strategy": "lora",
                        "lora_parts": "vml"})
    vlm = get_strategy("lora").prepare(load_vlm(llava_family["hf"]), cfg)
    with torch.no_grad():
        for name, p in vlm.net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    table = build_prompts(vlm, QUESTIONS, ANSWERS)
    module = TeacherForced(vlm).train()
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            vlm.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        vlm.net.zero_grad()
        loss = token_mean(module(batch(vlm, table)))
        loss.backward()
        # the vision tower's last layer feeds nothing (features come from layer -2): no gradient there
        results.append((loss.detach(), {n: p.grad.clone() for n, p in vlm.net.named_parameters() if p.grad is not None}))
    assert vlm.llava.is_gradient_checkpointing
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    assert all(any(part in n for n in results[1][1]) for part in ("vision_tower", "language_model", "multi_modal_projector"))
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-5, rtol=1e-4)


def test_resume_continues_lora_training_exactly(llava_family, tmp_path):
    """Two epochs in one go equal one epoch, a stop, and a resumed second epoch from the engine's checkpoint."""
    from medvlm.data.vqa import load_vqa
    from medvlm.engine.checkpoints import checkpoint_identity
    from medvlm.engine.trainer import Checkpoints, fit, make_accelerator, trainable_state
    from medvlm.experiments.generative_vqa import teacher_forced_sets
    from medvlm.tasks.generative_vqa import AnswerObjective
    from tests.conftest import SHARED_DATA

    def train(epochs: int, run: str, on_resume=None):
        cfg = build_config({"task": "vqa", "model": llava_family["hf"], "dataset": "vqa_rad", "strategy": "lora",
                            "epochs": epochs, "patience": 5, "batch_size": 3, "lr": 1e-2, "seed": 3,
                            "checkpoint_every": 0})
        torch.manual_seed(0)
        vlm = get_strategy("lora").prepare(load_vlm(llava_family["hf"]), cfg)
        data = load_vqa("vqa_rad", data_root=SHARED_DATA, image_size=32, max_rows=6)
        tables = {s: build_prompts(vlm, data.splits[s]["question"].tolist(), data.splits[s]["answer"].tolist())
                  for s in ("train", "val")}
        sets = teacher_forced_sets(data, tables)
        result = fit(AnswerObjective(TeacherForced(vlm)), sets["train"], sets["val"], cfg, make_accelerator(cfg),
                     # one identity for the stopped and the resumed run: the same run, cut short after epoch 1
                     Checkpoints(tmp_path, run, checkpoint_identity(run, {**cfg.resolved(), "epochs": 2}, vlm.spec.pin)),
                     on_resume=on_resume)
        return result, {k: v for k, v in trainable_state(vlm).items()}

    straight, weights = train(2, "straight")
    train(1, "resumed")
    restored: list[dict] = []
    resumed, resumed_weights = train(2, "resumed", on_resume=restored.extend)
    assert len(restored) == 1  # it started from the checkpoint of epoch 1, not from scratch
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert resumed_weights.keys() == weights.keys() and len(weights) > 0
    for key, value in weights.items():
        torch.testing.assert_close(resumed_weights[key], value)


def test_strategies_that_do_not_apply_fail_in_one_line_with_a_failed_run(llava_family, workdir, capsys):
    from mlflow.tracking import MlflowClient

    from medvlm.cli import main

    common = ["--task", "vqa", "--model", llava_family["hf"], "--dataset", "vqa_rad"]
    assert main(["finetune", *common, "--strategy", "partial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "strategy=partial does not apply to generative (LLaVA) models" in err and "mlp, lora" in err
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert main(["finetune", *common, "--strategy", "mlp", "--lora-parts", "v"]) == 2
    assert "lora_parts=v needs strategy=lora" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["mlp", "lora"])
def test_bf16_frozen_weights_with_fp32_trained_ones_train_and_generate(llava_family, strategy):
    """The GPU layout (frozen weights stored in bf16, trained ones in fp32), exercised with CPU autocast."""
    from medvlm.experiments.generative_vqa import trainable_in_fp32

    cfg = build_config({"task": "vqa", "model": llava_family["hf"], "dataset": "vqa_rad", "strategy": strategy})
    vlm = get_strategy(strategy).prepare(load_vlm(llava_family["hf"], dtype=torch.bfloat16), cfg)
    trainable_in_fp32(vlm)
    dtypes = {p.dtype for p in vlm.parameters() if p.requires_grad}, {p.dtype for p in vlm.parameters() if not p.requires_grad}
    assert dtypes == ({torch.float32}, {torch.bfloat16})
    table = build_prompts(vlm, QUESTIONS, ANSWERS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = token_mean(TeacherForced(vlm)(batch(vlm, table)))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                                        for p in vlm.parameters() if p.requires_grad)
    assert len(answer_all(vlm, images(), torch.arange(4), table, 3, 4)) == 4
