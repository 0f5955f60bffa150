"""Tiny LLaVA-family checkpoints in their real on-disk formats, built offline for the tests.

- `write_llava_hf`: a transformers `LlavaForConditionalGeneration` (tiny CLIP vision tower + tiny
  Llama) saved with `save_pretrained`, with a `LlavaProcessor`: a real fast BPE tokenizer trained
  with `tokenizers` on the real VQA-RAD questions and answers, and the llava-1.5-hf chat template.
  With `next_=True`, the same as a LLaVA-NeXT folder (any-resolution tiles).
- `write_llava_med`: the same sizes in the LLaVA-Med v1.5 release's own layout (`llava_mistral`
  config with `mm_*` keys, `model.mm_projector.{0,2}`, `model.vision_tower.vision_tower.vision_model.*`,
  a Mistral language model), plus the Hub mirror of the CLIP tower config it names.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

import pytest

from medvlm.data.vqa import VQA_RAD_JSON
from tests.conftest import SHARED_DATA

VQA_RAD = SHARED_DATA / "vqa_rad"
IMAGE_SIZE, PATCH = 32, 8
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# the llava-hf/llava-1.5-7b-hf chat template (its chat_template.json)
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def vqa_rad_texts() -> list[str]:
    records = json.loads((VQA_RAD / VQA_RAD_JSON).read_text())
    return [str(r["question"]) for r in records] + [str(r["answer"]) for r in records]


@lru_cache(maxsize=1)
def _trained(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(vqa_rad_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok.to_str()


def train_tokenizer(vocab_size: int = 400):
    """A byte-level BPE trained on VQA-RAD's questions and answers; BOS added like Llama's."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_trained(vocab_size))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})


def _sizes(vocab: int) -> dict:
    return {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16, hidden_act="quick_gelu"),
            "text": dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)}


def write_llava_hf(folder: Path, seed: int = 0, next_: bool = False) -> Path:
    """A transformers Llava folder (config, safetensors, processor with tokenizer and chat template).

    `next_`: a LLaVA-NeXT folder instead, with any-resolution tiles (pinpoints at the tiny size).
    """
    import transformers as tf

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    sizes = _sizes(len(tokenizer))
    text = tf.LlamaConfig(**sizes["text"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    common = {"vision_config": tf.CLIPVisionConfig(**sizes["vision"]), "text_config": text,
              "image_token_index": tokenizer.convert_tokens_to_ids("<image>")}
    crop = {"size": {"shortest_edge": IMAGE_SIZE}, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}
    if next_:
        pinpoints = [[IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE], [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]
        config = tf.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        model_cls, processor_cls = tf.LlavaNextForConditionalGeneration, tf.LlavaNextProcessor
        images = tf.LlavaNextImageProcessor(**crop, image_grid_pinpoints=pinpoints)
    else:
        config = tf.LlavaConfig(**common, image_seq_length=(IMAGE_SIZE // PATCH) ** 2)
        model_cls, processor_cls = tf.LlavaForConditionalGeneration, tf.LlavaProcessor
        images = tf.CLIPImageProcessor(**crop)
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(folder)
    processor_cls(image_processor=images, tokenizer=tokenizer, patch_size=PATCH, chat_template=LLAVA15_TEMPLATE,
                  vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(folder)
    return folder


def llava_med_state(seed: int = 0) -> tuple[dict, dict[str, torch.Tensor], object]:
    """(config.json dict, state dict in the release's key layout, tokenizer) with random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

    tokenizer = train_tokenizer()
    sizes = _sizes(len(tokenizer))
    torch.manual_seed(seed)
    lm = MistralForCausalLM(MistralConfig(**sizes["text"], sliding_window=None))
    vision = CLIPVisionModel(CLIPVisionConfig(**sizes["vision"]))
    hidden = sizes["text"]["hidden_size"]
    projector = torch.nn.Sequential(torch.nn.Linear(sizes["vision"]["hidden_size"], hidden), torch.nn.GELU(),
                                    torch.nn.Linear(hidden, hidden))
    state = dict(lm.state_dict())
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    state.update({f"model.vision_tower.vision_tower.{k}": v for k, v in vision.state_dict().items()})
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.3 if v.is_floating_point() else v for k, v in state.items()}
    config = {"architectures": ["LlavaMistralForCausalLM"], "model_type": "llava_mistral", **sizes["text"],
              "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": None,
              "tie_word_embeddings": False, "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "torch_dtype": "float32",
              "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": sizes["vision"]["hidden_size"],
              "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
              "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
              "mm_patch_merge_type": "flat", "tune_mm_mlp_adapter": False, "use_mm_proj": True}
    return config, state, tokenizer


def write_llava_med(weights_root: Path, seed: int = 0, drop: str | None = None) -> Path:
    """`<weights_root>/llava-med/` in the release layout and `<weights_root>/openai/clip-vit-large-patch14-336/`.

    `drop` removes one key from the checkpoint (strict-loading tests).
    """
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    config, state, tokenizer = llava_med_state(seed)
    folder = weights_root / "llava-med"
    folder.mkdir(parents=True, exist_ok=True)
    if drop:
        state.pop(drop)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)
    tower = weights_root / "openai" / "clip-vit-large-patch14-336"
    tower.mkdir(parents=True, exist_ok=True)
    CLIPVisionConfig(**_sizes(len(tokenizer))["vision"]).save_pretrained(tower)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(tower)
    return folder


needs_vqa_rad = pytest.mark.skipif(not (VQA_RAD / VQA_RAD_JSON).is_file(),
                                   reason=f"real VQA-RAD (its questions train the tiny tokenizer) not found at "
                                          f"{VQA_RAD} (../shared/data beside the checkout, or set MEDVLM_SHARED_DATA)")


@pytest.fixture(scope="module")
def llava_family(tmp_path_factory):
    """The tiny models, `MEDVLM_WEIGHTS` pointing at their mirror: {"hf": Llava folder, "med": "llava-med", "next": LLaVA-NeXT folder}."""
    if not (VQA_RAD / VQA_RAD_JSON).is_file():
        pytest.skip(f"real VQA-RAD not found at {VQA_RAD}: it trains the tiny models' tokenizer")
    root = tmp_path_factory.mktemp("llava-mirror")
    write_llava_med(root)
    hf = write_llava_hf(root / "tiny-llava")
    nxt = write_llava_hf(root / "tiny-llava-next", next_=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVLM_WEIGHTS", str(root))
        yield {"hf": str(hf), "med": "llava-med", "next": str(nxt), "root": root}
