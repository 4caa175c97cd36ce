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

    def lookup(self, texts) -> np.ndarray:
        """Vectors for `texts`; None (no query, as for recommendations) gives a zero vector."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        rows = [self._row.get(t, -1) if isinstance(t, str) else -1 for t in texts]
        missing = [t for t, r in zip(texts, rows) if r < 0 and isinstance(t, str)]
        if missing:
            raise KeyError(f"{len(missing)} texts have no embedding, e.g. {missing[0]!r}")
        rows = np.asarray(rows)
        known = rows >= 0
        out[known] = self.vectors[rows[known]]
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
