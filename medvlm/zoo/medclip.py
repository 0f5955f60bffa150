"""MedCLIP-ViT from its released `pytorch_model.bin` (RyanWangZf/MedCLIP, `MedCLIPModel(MedCLIPVisionModelViT)`).

The pip release of MedCLIP no longer runs; this reimplements its forward on the same keys:
- image: grayscale pixels repeated to 3 channels -> transformers SwinModel
  (`microsoft/swin-tiny-patch4-window7-224`) `pooler_output` (mean of the final tokens) ->
  `vision_model.projection_head` (Linear 768->512, no bias);
- text: Bio_ClinicalBERT with the attention mask; the mean over tokens of the average of the
  hidden states of layers 1, 2 and the last (MedCLIPTextModel's "1+2+last layer" pooling) ->
  `text_model.projection_head` (Linear 768->512, no bias). MedCLIP's own code averages over
  every position of a batch padded to its longest text, so its embedding of a text depends on
  the batch; here the mean runs over the text's real tokens, which is MedCLIP's result for the
  text on its own (and for the longest text of any batch);
- logit scale: `exp(clamp(logit_scale, 0, 4.6052))`, the clamp MedCLIP applies before use.
Preprocessing (MedCLIPFeatureExtractor): one grey channel, mean 0.5862785803043838,
std 0.27950088968644304, 224 px, bicubic. Tokenizer: Bio_ClinicalBERT, max length 77.

Keys: everything in the file is loaded except, knowingly, BERT's `embeddings.position_ids`
(stale since transformers 4.31) and, because current transformers rebuild them, Swin's
`relative_position_index` constants (each checked equal first) and BERT's pooler, which
MedCLIP computes but never uses.
"""

from __future__ import annotations

import torch
from torch import nn

from medvlm.zoo import hf_parts
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import checkpoint_file, load_exact, load_torch_checkpoint, required, take, weights_digest

LOGIT_SCALE_MAX = 4.6052
TEXT_LAYERS = (1, 2, -1)


class Tower(nn.Module):
    """MedCLIP's vision/text model: a transformers backbone under `.model` plus `.projection_head`."""

    def __init__(self, backbone: nn.Module, embed_dim: int):
        super().__init__()
        self.model = backbone
        self.projection_head = nn.Linear(backbone.config.hidden_size, embed_dim, bias=False)


class MedCLIPNet(nn.Module):
    def __init__(self, vision: Tower, text: Tower):
        super().__init__()
        self.vision_model = vision
        self.text_model = text
        self.logit_scale = nn.Parameter(torch.ones([]))


class MedCLIPModel(hf_parts.TokenizerClipModel):
    def __init__(self, net: MedCLIPNet, tokenizer, spec: ModelSpec, preprocess: Preprocess):
        super().__init__(net, tokenizer, spec, preprocess, net.vision_model.projection_head.out_features)

    def _image_states(self, pixels: torch.Tensor):
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        return self.net.vision_model.model(pixel_values=pixels)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.vision_model.projection_head(self._image_states(pixels).pooler_output)

    def _token_states(self, text: TextBatch) -> torch.Tensor:
        """Per token, the mean of the layer-1, layer-2 and last hidden states: [B, L, 768]."""
        out = self.net.text_model.model(input_ids=text.input_ids, attention_mask=text.attention_mask.long(),
                                        output_hidden_states=True)
        return torch.stack([out.hidden_states[i] for i in TEXT_LAYERS]).mean(dim=0)

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        mask = text.attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self._token_states(text) * mask).sum(dim=1) / mask.sum(dim=1)
        return self.net.text_model.projection_head(pooled)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The final Swin tokens through `projection_head`: their mean is the image embedding."""
        return self.net.vision_model.projection_head(self._image_states(pixels).last_hidden_state)

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-averaged token states through `projection_head`: their masked mean is the text embedding."""
        return self.net.text_model.projection_head(self._token_states(text)), text.attention_mask

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.clamp(0, LOGIT_SCALE_MAX).exp()


def load_medclip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    path = checkpoint_file(spec.name, location, entry["checkpoint"], entry.get("download"))
    state = dict(load_torch_checkpoint(path))
    swin = hf_parts.swin_from_state(take(state, "vision_model.model."), entry["image_tower"], spec.name)
    bert = hf_parts.bert_from_state(take(state, "text_model.model."), entry["text_tower"], spec.name)
    embed_dim = required(state, "vision_model.projection_head.weight", spec.name).shape[0]
    net = MedCLIPNet(Tower(swin, embed_dim), Tower(bert, embed_dim))
    load_exact(net, state, spec.name, "MedCLIP", loaded=("vision_model.model.", "text_model.model."))
    preprocess = Preprocess(image_size=entry["image_size"], mean=tuple(entry["mean"]), std=tuple(entry["std"]),
                            channels=1)
    spec.pin = {"model": str(path.resolve()), "sha256": weights_digest(path)}
    return MedCLIPModel(net.float(), hf_parts.tokenizer(entry["text_tower"], spec.name), spec, preprocess)
