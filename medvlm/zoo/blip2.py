"""BLIP-2 image-text contrastive (ITC) embeddings through transformers `Blip2ForImageTextRetrieval`.

BLIP-2 does not embed an image as one vector. The EVA ViT-g features feed the Q-Former
through 32 learned query tokens; each query output goes through `vision_projection` and is
L2-normalised, giving 32 image vectors. The text is the Q-Former's [CLS] state (text only,
no queries) through `text_projection`, normalised. BLIP-2's ITC similarity of an image and
a text is the MAXIMUM over the 32 queries of their cosine (`itc_similarity`, equal to
`Blip2ForImageTextRetrieval(..., use_image_text_matching_head=False).logits_per_image`).

`ClipModel` needs one image vector, so `encode_image` returns the mean of the 32 normalised
query vectors. Its cosine with a text is, up to a per-image constant, the MEAN over queries
of the query-text cosines; for one image, ranking texts (zero-shot classes, image->text
retrieval) therefore uses mean-over-queries instead of BLIP-2's max. Linear probes and
fine-tuning see a fixed-size pooled feature. Use `itc_similarity` where BLIP-2's own score
is wanted. The Hugging Face release carries no temperature (LAVIS's `temp` is not part of
the transformers model), so the logit scale is LAVIS's initial 1/0.07, fixed.

The token grid for VQA is the 32 projected query outputs (BLIP-2's own visual tokens).
The image-text matching head (`itm_head`) is removed after strict loading: ITC never uses it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from medvlm.errors import ModelError
from medvlm.network import clipped
from medvlm.zoo import hf_parts
from medvlm.zoo.base import ClipModel, ModelSpec, Preprocess, TextBatch
from medvlm.zoo.checkpoints import weights_digest

TEMPERATURE = 0.07


class Blip2ItcModel(hf_parts.TokenizerClipModel):
    def __init__(self, net, tokenizer, spec: ModelSpec, preprocess: Preprocess):
        super().__init__(net, tokenizer, spec, preprocess, net.vision_projection.out_features)
        self.register_buffer("temperature", torch.tensor(TEMPERATURE), persistent=False)

    def query_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """The 32 normalised, projected Q-Former query outputs: [B, Q, D]."""
        return F.normalize(self.image_tokens(pixels), dim=-1)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Q-Former query outputs over the ViT features, through `vision_projection`: [B, Q, D]."""
        features = self.net.vision_model(pixel_values=pixels).last_hidden_state
        queries = self.net.query_tokens.expand(len(features), -1, -1)
        out = self.net.qformer(query_embeds=queries, encoder_hidden_states=features,
                               encoder_attention_mask=torch.ones(features.shape[:-1], dtype=torch.long,
                                                                 device=features.device))
        return self.net.vision_projection(out.last_hidden_state)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.query_embeddings(pixels).mean(dim=1)

    def _text_states(self, text: TextBatch) -> torch.Tensor:
        out = self.net.qformer(query_embeds=self.net.embeddings(input_ids=text.input_ids), query_length=0,
                               attention_mask=text.attention_mask.long())
        return out.last_hidden_state

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        return self.net.text_projection(self._text_states(text)[:, 0])

    def text_tokens(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.text_projection(self._text_states(text)), text.attention_mask

    def itc_similarity(self, query_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """BLIP-2's ITC score [images, texts]: max over queries of the cosine."""
        return torch.einsum("bqd,td->btq", query_embeddings, F.normalize(text_embeddings, dim=-1)).amax(dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return 1.0 / self.temperature


def load_blip2(entry: dict, spec: ModelSpec, location: str | None) -> ClipModel:
    # lazy: transformers loads only for the models (and judges) that need it
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    ident = location or entry["model"]
    try:
        net, info = Blip2ForImageTextRetrieval.from_pretrained(ident, local_files_only=location is not None,
                                                               output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(ident, local_files_only=location is not None)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load BLIP-2 model '{spec.name}' from {ident} ({clipped(str(exc), 160)}); "
                         f"offline, put its save_pretrained folder in $MEDVLM_WEIGHTS/{spec.name}/") from None
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ModelError(f"model '{spec.name}': {ident} lacks weights {sorted(info['missing_keys'])[:6]}; "
                         f"it is not a Blip2ForImageTextRetrieval checkpoint")
    del net.itm_head
    spec.pin = ({"model": str(Path(location).resolve()), "sha256": weights_digest(Path(location))}
                if location else {"model": ident, "revision": getattr(net.config, "_commit_hash", None)})
    preprocess = hf_parts.preprocess_from(ident, int(net.config.vision_config.image_size),
                                          tuple(entry["mean"]), tuple(entry["std"]), resample=3)
    return Blip2ItcModel(net.float().eval(), tokenizer, spec, preprocess)
