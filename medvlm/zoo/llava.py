"""Generative vision-language models of the LLaVA family as transformers `LlavaForConditionalGeneration`.

Two on-disk formats load into the same module, so strategies, training and generation have
one code path:

- transformers Llava folders or Hub ids (`llava-hf/llava-1.5-7b-hf`): config, weights and the
  processor (tokenizer, image statistics, chat template) as saved by `save_pretrained`.
- the LLaVA-Med v1.5 release (`microsoft/llava-med-v1.5-mistral-7b`) in its own format: a
  `llava_mistral` config with `mm_*` keys and LLaVA's key layout. It is mapped exactly:
  `model.mm_projector.{0,2}` (mlp2x_gelu) -> `multi_modal_projector.linear_{1,2}`,
  `model.vision_tower.vision_tower.*` -> `model.vision_tower.*`, the Mistral decoder ->
  `model.language_model.*`, `lm_head` as is; `mm_vision_select_layer` -> `vision_feature_layer`,
  `mm_vision_select_feature` patch/cls_patch -> strategy default/full. The CLIP tower's config
  and image statistics come from the repository `mm_vision_tower` names (its
  `$MEDVLM_WEIGHTS/<org>/<repo>` mirror offline), as LLaVA-Med itself reads them; its weights
  come from the release when it holds them, else from that repository. Loading is strict:
  any key missing or left over stops it. The conversation template is LLaVA-Med's
  `mistral_instruct` (`[INST] <image>\\n{question} [/INST] {answer}</s>`), written as a chat template.
  `image_aspect_ratio: pad` pads images to a square in the image mean colour, as LLaVA does.
  LLaVA inserts the image at a sentinel id outside the vocabulary; here the image placeholder
  is the tokenizer's `<unk>` id, which byte-fallback tokenisation never produces, so no
  embedding row is added and none is random.

`trust_remote_code` is never set: only transformers' own classes run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from torch import nn

from medvlm.errors import ModelError
from medvlm.network import clipped
from medvlm.zoo.base import ModelSpec, Preprocess
from medvlm.zoo.checkpoints import drop_index_buffers, hf_from_state, hub_source, load_torch_checkpoint, weights_digest
from medvlm.zoo.hub import hub_unreachable

IMAGE_PLACEHOLDER = "<image>"
HF_LLAVA_TYPES = ("llava", "llava_next")
ORIGINAL_LLAVA_TYPES = ("llava_mistral", "llava_llama", "llava_mpt")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# LLaVA-Med's `mistral_instruct` conversation (SeparatorStyle.LLAMA_2, empty system prompt), as a chat template.
LLAVA_MED_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %} [/INST]"
    "{% else %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %} {{ c['text'] }}{% endfor %}"
    "{% endif %}{% endfor %}"
)

# Module-name suffixes per part, for LoRA's part selection (v = vision tower, l = language model, m = projector).
LORA_PARTS: dict[str, dict[str, Any]] = {
    "v": {"prefix": "model.vision_tower.", "targets": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                       "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]},
    "l": {"prefix": "model.language_model.", "targets": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                         "mlp.down_proj"]},
    "m": {"prefix": "model.multi_modal_projector.", "targets": ["linear_1", "linear_2"]},
}
PROJECTOR = "model.multi_modal_projector"


class GenerativeVLM(nn.Module):
    """A LLaVA-family model with what prompting needs: tokenizer, chat template, image token layout.

    `net` is the `LlavaForConditionalGeneration` (or LLaVA-NeXT's; a peft model once LoRA is
    applied); parameter names seen by strategies are its own. Images arrive as uint8 and are normalised with
    `preprocess`; each image placeholder in a prompt becomes `image_tokens` copies of `image_token_id`.
    """

    generative = True

    def __init__(self, net: nn.Module, tokenizer: Any, spec: ModelSpec, preprocess: Preprocess, template: str,
                 image_token_id: int, image_tokens: int, image_processor: Any = None,
                 pad: tuple[int, int, int] | None = None):
        super().__init__()
        self.image_processor = image_processor  # LLaVA-NeXT (any-resolution tiles); None: one square image per row
        self.pad = pad  # LLaVA's `image_aspect_ratio: pad`: images padded to square with this colour, not cropped
        self.net, self.tokenizer, self.spec, self.preprocess = net, tokenizer, spec, preprocess
        self.template, self.image_token_id, self.image_tokens = template, image_token_id, image_tokens
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id == image_token_id:
            raise ModelError(f"model '{spec.name}': the padding id equals the image token id {image_token_id}; "
                             f"give the tokenizer a distinct pad token")

    @property
    def llava(self) -> nn.Module:
        """The transformers model under any peft wrapper (LoRA layers are injected in place)."""
        net = self.net
        return net.get_base_model() if hasattr(net, "get_base_model") else net

    def render(self, question: str, answer: str | None = None) -> str:
        """The chat-template text of one turn with an image, ending at the generation prompt when no answer."""
        # lazy: transformers loads only for the models (and judges) that need it
        from transformers.utils.chat_template_utils import render_jinja_template

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.template,
                                            add_generation_prompt=answer is None, **self._special_tokens())
        return rendered[0]

    def _special_tokens(self) -> dict[str, str]:
        tok = self.tokenizer
        return {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or ""}

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of rendered texts, each image placeholder expanded to `image_tokens` image ids.

        With the placeholder in the vocabulary (transformers Llava) the whole text is tokenised,
        exactly as `LlavaProcessor` does; otherwise (LLaVA-Med) the pieces around it are, as
        LLaVA's `tokenizer_image_token` does. Both start with BOS where the tokenizer adds it.
        """
        tok = self.tokenizer
        in_vocab = IMAGE_PLACEHOLDER in tok.get_vocab()
        if in_vocab:
            placeholder = tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
            rows = tok(texts, add_special_tokens=True)["input_ids"]
            return [[t for i in row for t in ([self.image_token_id] * self.image_tokens if i == placeholder else [i])]
                    for row in rows]
        out = []
        for text in texts:
            pieces = text.split(IMAGE_PLACEHOLDER)
            ids = tok(pieces, add_special_tokens=False)["input_ids"]
            row = [tok.bos_token_id] if tok.bos_token_id is not None else []
            for k, piece in enumerate(ids):
                row += piece + ([self.image_token_id] * self.image_tokens if k < len(ids) - 1 else [])
            out.append(row)
        return out



def model_type(ident: str) -> str | None:
    """`model_type` of a transformers-style folder or cached/mirrored Hub id; None when unknown offline."""
    folder = Path(hub_source(ident))
    path = folder / "config.json"
    if not path.is_file():
        try:
            hub_unreachable()  # unreachable: offline mode, so the cache answers at once instead of a minute of retries
            path = Path(hf_hub_download(ident, "config.json"))
        except Exception:  # offline or no such repo: the caller's default loader reports it
            return None
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _lora_spec(spec: ModelSpec) -> ModelSpec:
    spec.partial = spec.partial or [PROJECTOR]
    spec.lora_parts = spec.lora_parts or {k: dict(v) for k, v in LORA_PARTS.items()}
    spec.vision_prefix, spec.text_prefix = "model.vision_tower.", "model.language_model."
    return spec


def _pin(spec: ModelSpec, location: str | None, ident: str, net: nn.Module) -> dict:
    if location:
        return {"model": str(Path(location).resolve()), "sha256": weights_digest(Path(location))}
    return {"model": ident, "revision": getattr(net.config, "_commit_hash", None)}


def _image_tokens(processor: Any, size: int) -> int:
    """How many image tokens the processor puts in a prompt for one size x size image (LLaVA-NeXT: tiles + newlines)."""
    ids = processor(images=[np.zeros((size, size, 3), dtype=np.uint8)], text=[processor.image_token],
                    return_tensors="pt")["input_ids"]
    return int((ids == processor.image_token_id).sum())


def load_llava_hf(entry: dict, spec: ModelSpec, location: str | None, dtype: torch.dtype = torch.float32) -> GenerativeVLM:
    """A transformers Llava or LLaVA-NeXT folder or Hub id, with its processor's tokenizer, image statistics and chat template."""
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    ident = location or hub_source(entry["model"])
    local = Path(ident).is_dir()
    cls = LlavaNextForConditionalGeneration if model_type(ident) == "llava_next" else LlavaForConditionalGeneration
    try:
        processor = AutoProcessor.from_pretrained(ident, local_files_only=local)
        net = cls.from_pretrained(ident, local_files_only=local, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load LLaVA model '{spec.name}' from {ident} ({clipped(str(exc), 200)}); offline, put its "
            f"save_pretrained folder (config.json, safetensors, processor and tokenizer files) in "
            f"$MEDVLM_WEIGHTS/{spec.name}/ or pass its path") from None
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if not template:
        raise ModelError(f"LLaVA model '{spec.name}' at {ident} has no chat template; add chat_template.jinja "
                         f"(the model card's prompt format) to the folder")
    images = processor.image_processor
    size = images.crop_size["height"] if getattr(images, "crop_size", None) else images.size["shortest_edge"]
    preprocess = Preprocess(image_size=int(size), mean=tuple(images.image_mean), std=tuple(images.image_std))
    spec = _lora_spec(spec)
    spec.pin = _pin(spec, location, ident, net)
    tiles = images if cls is LlavaNextForConditionalGeneration else None
    return GenerativeVLM(net.eval(), processor.tokenizer, spec, preprocess, template, net.config.image_token_id,
                         _image_tokens(processor, int(size)), tiles)


def _text_config(cfg: dict, name: str) -> Any:
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import LlamaConfig, MistralConfig

    kind = {"llava_mistral": MistralConfig, "llava_llama": LlamaConfig}.get(cfg["model_type"])
    if kind is None:
        raise ModelError(f"model '{name}': LLaVA language model type {cfg['model_type']} is not supported; "
                         f"supported: llava_mistral (LLaVA-Med v1.5), llava_llama")
    keys = set(kind().to_dict()) - {"model_type", "architectures", "transformers_version"}
    return kind(**{k: v for k, v in cfg.items() if k in keys})


def _check_original(cfg: dict, name: str) -> None:
    if cfg.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise ModelError(f"model '{name}': mm_projector_type {cfg.get('mm_projector_type')} has no transformers "
                         f"Llava counterpart (it needs mlp2x_gelu)")
    if cfg.get("mm_use_im_start_end") or cfg.get("mm_use_im_patch_token"):
        raise ModelError(f"model '{name}': image start/end or patch tokens (mm_use_im_*) are not supported")
    if cfg.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise ModelError(f"model '{name}': mm_vision_select_feature {cfg['mm_vision_select_feature']} is unknown")


def read_original_state(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """Every tensor of a LLaVA release folder: safetensors shards, else PyTorch `.bin` shards."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelError(f"model '{name}': no *.safetensors or pytorch_model*.bin in {folder}; put the release's "
                         f"weight shards there")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)) if f.suffix == ".safetensors" else load_torch_checkpoint(f))
    return state


def map_original_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """LLaVA's key layout -> `LlavaForConditionalGeneration`'s, one rename per key; unknown keys are kept (and fail strict loading)."""
    renames = (("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
               ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
               ("model.vision_tower.vision_tower.", "model.vision_tower."),
               ("model.", "model.language_model."))
    mapped = {}
    for key, value in state.items():
        new = key
        for old, repl in renames:
            if key.startswith(old):
                new = repl + key[len(old):]
                break
        mapped[new] = value
    position = "model.vision_tower.vision_model.embeddings.position_ids"
    drop_index_buffers(mapped, position, torch.arange(100_000), name)
    return mapped


def load_llava_original(entry: dict, spec: ModelSpec, location: str | None,
                        dtype: torch.dtype = torch.float32) -> GenerativeVLM:
    """The LLaVA-Med v1.5 release (or another original-LLaVA `llava_mistral`/`llava_llama` folder), strictly."""
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlavaConfig, \
        LlavaForConditionalGeneration

    name = spec.name
    folder = Path(location or hub_source(entry["model"]))
    if not (folder / "config.json").is_file():
        raise ModelError(f"model '{name}': the LLaVA-Med release is not at {folder}; download it with "
                         f"`huggingface-cli download {entry['model']} --local-dir $MEDVLM_WEIGHTS/{name}` "
                         f"(and its vision tower repo to $MEDVLM_WEIGHTS/<org>/<repo>)")
    cfg = json.loads((folder / "config.json").read_text())
    _check_original(cfg, name)
    tower = hub_source(cfg["mm_vision_tower"])
    try:
        vision_config = CLIPVisionConfig.from_pretrained(tower)
        images = CLIPImageProcessor.from_pretrained(tower)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model '{name}': cannot read the vision tower {cfg['mm_vision_tower']} config or the "
                         f"tokenizer ({clipped(str(exc), 160)}); offline, mirror the tower repo to "
                         f"$MEDVLM_WEIGHTS/{cfg['mm_vision_tower']}/") from None
    if tokenizer.unk_token_id is None:
        raise ModelError(f"model '{name}': the tokenizer has no <unk> token to stand for the image")
    strategy = "default" if cfg.get("mm_vision_select_feature", "patch") == "patch" else "full"
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=_text_config(cfg, name).to_dict(),
                         image_token_index=tokenizer.unk_token_id, projector_hidden_act="gelu",
                         vision_feature_layer=cfg.get("mm_vision_select_layer", -2),
                         vision_feature_select_strategy=strategy, tie_word_embeddings=False)
    state = map_original_state(read_original_state(folder, name), name)
    if not any(k.startswith("model.vision_tower.") for k in state):
        vision = CLIPVisionModel.from_pretrained(tower)
        state.update({f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()})
    net = hf_from_state(LlavaForConditionalGeneration, config, state, name, "the LLaVA-Med release").to(dtype)
    n = (vision_config.image_size // vision_config.patch_size) ** 2 + (1 if strategy == "full" else 0)
    size = images.crop_size["height"] if getattr(images, "crop_size", None) else vision_config.image_size
    preprocess = Preprocess(image_size=int(size), mean=tuple(images.image_mean or OPENAI_MEAN),
                            std=tuple(images.image_std or OPENAI_STD))
    spec = _lora_spec(spec)
    spec.pin = _pin(spec, str(folder), str(folder), net)
    # LLaVA's expand2square background: the image mean as 0..255 integers (122, 116, 104 for CLIP)
    pad = tuple(int(m * 255) for m in preprocess.mean) if cfg.get("image_aspect_ratio") == "pad" else None
    return GenerativeVLM(net, tokenizer, spec, preprocess, LLAVA_MED_TEMPLATE, tokenizer.unk_token_id, n, pad=pad)

