"""Text -> vector tables written by the pretrain stage: texts in Parquet, vectors in safetensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

TEXTS_FILE = "texts.parquet"
VECTORS_FILE = "vectors.safetensors"


@dataclass
class EmbeddingTable:
    texts: list[str]
    vectors: np.ndarray  # (len(texts), dim) float32

    def __post_init__(self):
        self._row = {text: i for i, text in enumerate(self.texts)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def indices(self, texts: pd.Series, missing: int) -> np.ndarray:
        """Row of each text in the table; `missing` for no text (None, as for recommendations)."""
        present = texts.notna().to_numpy()
        codes, uniques = pd.factorize(texts[present])
        rows = np.array([self._row.get(t, -1) for t in uniques], dtype=np.int64)
        if (rows < 0).any():
            unknown = [t for t, r in zip(uniques, rows) if r < 0]
            raise KeyError(f"{len(unknown)} texts have no embedding, e.g. {unknown[0]!r}")
        out = np.full(len(texts), missing, dtype=np.int64)
        out[present] = rows[codes]
        return out


def save(directory: str | Path, texts: list[str], vectors: np.ndarray) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": texts}).to_parquet(directory / TEXTS_FILE, index=False)
    save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, str(directory / VECTORS_FILE))


def load(directory: str | Path) -> EmbeddingTable:
    directory = Path(directory)
    texts = pd.read_parquet(directory / TEXTS_FILE)["text"].tolist()
    return EmbeddingTable(texts, load_file(str(directory / VECTORS_FILE))["vectors"])
