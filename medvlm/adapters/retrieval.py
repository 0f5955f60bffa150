"""A logged retrieval LoRA adapter as an MLflow model that embeds images and texts.

Artifacts as every adapter (`medvlm.adapters.base`): the peft adapter and
`medvlm.json`; retrieval has no head. Images are preprocessed exactly as in training
(`decode_image`: shorter side to the model's size, centre crop) and texts are tokenised by the
model's tokenizer, so embeddings match those the run's recall was measured on.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec

from medvlm.adapters.base import AdapterModel, example_png, serving_signature
from medvlm.data.sources import decode_image
from medvlm.errors import ModelError
from medvlm.tasks.retrieval import DualEncoder

INPUT_COLUMNS = ("image", "text")


class RetrievalAdapterModel(AdapterModel):
    """Input: a DataFrame with an `image` column (encoded bytes or a file path), a `text` column, or both.
    Output: `image_embedding` / `text_embedding` columns of L2-normalised float lists, one row per input
    row (None where the cell is empty). Their dot product is the cosine similarity retrieval ranks by."""

    def load_context(self, context) -> None:
        self.load_base(context)
        self.encoder = DualEncoder(self.clip).eval()

    def serving(self, meta: dict[str, Any]) -> tuple[ModelSignature, pd.DataFrame]:
        """Both columns optional: images alone, texts alone, or both."""
        inputs = [ColSpec("binary", "image", required=False), ColSpec("string", "text", required=False)]
        outputs = [ColSpec(Array("double"), f"{c}_embedding", required=False) for c in INPUT_COLUMNS]
        return (serving_signature(inputs, outputs, batch_size=64),
                pd.DataFrame({"image": [example_png()], "text": ["chest x-ray"]}))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or not set(INPUT_COLUMNS) & set(model_input.columns):
            raise ModelError("retrieval input must be a DataFrame with an 'image' column (bytes or path), "
                             "a 'text' column, or both")
        batch = int((params or {}).get("batch_size", 64))
        out = pd.DataFrame(index=model_input.index)
        for column in INPUT_COLUMNS:
            if column in model_input.columns:
                cells = model_input[column]
                present = cells.map(lambda v: v is not None and not (isinstance(v, float) and pd.isna(v))).to_numpy()
                embeddings = self._embed(column, list(cells[present]), batch)
                values = [None] * len(cells)
                for row, emb in zip(present.nonzero()[0], embeddings):
                    values[row] = emb
                out[f"{column}_embedding"] = values
        return out

    @torch.no_grad()
    def _embed(self, column: str, cells: list, batch: int) -> list[list[float]]:
        chunks = []
        for start in range(0, len(cells), batch):
            part = cells[start:start + batch]
            if column == "image":
                size = self.clip.preprocess.image_size
                chunks.append(self.encoder.embed_images(torch.stack([decode_image(v, size) for v in part])))
            else:
                chunks.append(self.encoder.embed_texts(self.clip.tokenize([str(t) for t in part])))
        return torch.cat(chunks).tolist() if chunks else []
