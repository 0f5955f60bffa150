"""CXR-CLIP from kakaobrain's released `.tar` checkpoints (`r50_mcc.tar`, `swint_mcc.tar`, ...).

As the authors' `CXRClip` (configs `clip_resnet_clinical` / `clip_swin_clinical`) embeds:
- image, ResNet-50: torchvision resnet50 without `fc`, global-average-pooled 2048-d feature;
  Swin-Tiny: transformers SwinModel `last_hidden_state[:, 0]` (the authors take "the [CLS]
  token", but Swin has none: it is the first cell of the final 7x7 map, after the final norm);
  then `image_projection`, a Linear with bias, to 512;
- text: Bio_ClinicalBERT on ids cut at 256, with the attention mask; "eos" pooling = the
  state at `attention_mask.sum() - 1` (the [SEP] token); then `text_projection` (Linear, bias);
- logit scale: `logit_scale.exp()` (initialised at 1/0.07).
Normalisation follows the authors' trainer/evaluator: ImageNet mean/std for the ResNet
checkpoints ("normalize = imagenet" whenever the encoder is a ResNet), 0.5/0.5 for Swin;
bilinear Resize(224) + CenterCrop(224) of an RGB-converted image.

Checkpoint: `{"model", "optimizer", "scheduler", "config", "epoch", "train_loss"}` where
`config` is a Hydra/OmegaConf object, read with torch's weights-only unpickler and an inert
stand-in for those classes (see `checkpoints.load_torch_checkpoint`). Loaded from "model":
everything; dropped knowingly: BERT's unused pooler, and the constant index buffers that
transformers 4.26 saved (BERT `position_ids`, Swin `relative_position_index`), each checked.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from medvlm.errors import ModelError
from medvlm.zoo import hf_parts
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import checkpoint_file, load_exact, load_torch_checkpoint, required, take, weights_digest

ARCHITECTURES = {"image_encoder.resnet.": "resnet50", "image_encoder.image_encoder.": "swin"}


class ResNetEncoder(nn.Module):
    """The authors' `ResNet50` wrapper: a torchvision ResNet under `.resnet`, no `fc`.

    Depth and bottleneck width are read from the checkpoint ([3, 4, 6, 3] and 64 for the
    release, i.e. torchvision's resnet50), so one loader serves the release and shrunk copies.
    """

    def __init__(self, layers: list[int], width_per_group: int):
        super().__init__()
        self.resnet = ResNet(Bottleneck, layers, width_per_group=width_per_group)
        del self.resnet.fc

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


class SwinEncoder(nn.Module):
    """The authors' `HuggingfaceImageEncoder` (model_type swin): the SwinModel under `.image_encoder`."""

    def __init__(self, swin: nn.Module):
        super().__init__()
        self.image_encoder = swin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixel_values=x).last_hidden_state[:, 0]


class TextEncoder(nn.Module):
    """The authors' `HuggingfaceTextEncoder`: the BERT under `.text_encoder`."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.text_encoder = bert


class Projection(nn.Module):
    """The authors' `LinearProjectionHead`: a Linear with bias under `.projection`."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.projection = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class CXRCLIPNet(nn.Module):
    def __init__(self, image_encoder: nn.Module, text_encoder: TextEncoder, image_dim: int, embed_dim: int):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = Projection(image_dim, embed_dim)
        self.text_projection = Projection(text_encoder.text_encoder.config.hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]))


class CXRCLIPModel(hf_parts.TokenizerClipModel):
    def __init__(self, net: CXRCLIPNet, tokenizer, spec: ModelSpec, preprocess: Preprocess):
        super().__init__(net, tokenizer, spec, preprocess, net.image_projection.projection.out_features)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.image_projection(self.net.image_encoder(pixels))

    def _states(self, text: TextBatch) -> torch.Tensor:
        return self.net.text_encoder.text_encoder(input_ids=text.input_ids,
                                                  attention_mask=text.attention_mask.long()).last_hidden_state

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        eos = text.attention_mask.sum(dim=1) - 1
        return self.net.text_projection(self._states(text)[torch.arange(len(eos), device=eos.device), eos])

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """ResNet: the 7x7 cells of layer4; Swin: its 49 final tokens; through `image_projection`: [B, N, D].

        For the ResNet the embedding is the projection of the cells' mean, i.e. the mean of these tokens.
        """
        encoder = self.net.image_encoder
        if isinstance(encoder, ResNetEncoder):
            cells = encoder.feature_map(pixels).flatten(2).transpose(1, 2)
        else:
            cells = encoder.image_encoder(pixel_values=pixels).last_hidden_state
        return self.net.image_projection(cells)

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.text_projection(self._states(text)), text.attention_mask

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp()


def load_cxr_clip(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    path = checkpoint_file(spec.name, location, entry["checkpoint"], entry.get("download"))
    ckpt = load_torch_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ModelError(f"model '{spec.name}': {path} has no 'model' entry; it is not a CXR-CLIP release checkpoint")
    state = dict(ckpt["model"])
    found = [arch for prefix, arch in ARCHITECTURES.items() if any(k.startswith(prefix) for k in state)]
    if found != [entry["architecture"]]:
        raise ModelError(f"model '{spec.name}': {path.name} holds a {found or 'unknown'} image encoder, the zoo entry "
                         f"expects {entry['architecture']}; use the matching checkpoint file")
    text = TextEncoder(hf_parts.bert_from_state(take(state, "text_encoder.text_encoder."), entry["text_tower"],
                                                spec.name))
    if entry["architecture"] == "swin":
        image = SwinEncoder(hf_parts.swin_from_state(take(state, "image_encoder.image_encoder."),
                                                     entry["image_tower"], spec.name))
        image_dim, loaded = image.image_encoder.config.hidden_size, ("image_encoder.", "text_encoder.")
    else:
        layers = [len({k.split(".")[3] for k in state if k.startswith(f"image_encoder.resnet.layer{i}.")})
                  for i in range(1, 5)]
        width = required(state, "image_encoder.resnet.layer1.0.conv1.weight", spec.name).shape[0]
        image, image_dim, loaded = ResNetEncoder(layers, width), 512 * Bottleneck.expansion, ("text_encoder.",)
    embed_dim = required(state, "text_projection.projection.weight", spec.name).shape[0]
    net = CXRCLIPNet(image, text, image_dim, embed_dim)
    load_exact(net, state, spec.name, "CXR-CLIP", loaded=loaded)
    preprocess = Preprocess(image_size=entry["image_size"], mean=tuple(entry["mean"]), std=tuple(entry["std"]),
                            interpolation="bilinear")
    spec.pin = {"model": str(path.resolve()), "sha256": weights_digest(path)}
    return CXRCLIPModel(net.float(), hf_parts.tokenizer(entry["text_tower"], spec.name), spec, preprocess)
