"""Lexical match of a query and a title: the share of the query's character trigrams found in the title.

Sentence-embedding cosine blurs exact attributes (a brand, a colour, a material named in the query);
counting shared trigrams keeps them, survives a typo (most of a misspelt word's trigrams still match)
and needs no word boundaries, so it works for scripts written without spaces as well.
"""
from __future__ import annotations

import re

import numpy as np
from scipy import sparse

_WORD = re.compile(r"\w+")


def trigrams(text: str | None) -> set[str]:
    """Lower-cased character trigrams within each word; a word shorter than three characters is one gram."""
    if not isinstance(text, str):
        return set()
    return {word[i:i + 3] for word in _WORD.findall(text.lower()) for i in range(max(len(word) - 2, 1))}


def gram_matrix(texts: list[str | None]) -> sparse.csr_matrix:
    """(len(texts), vocabulary) 0/1 matrix of each text's trigrams."""
    vocabulary: dict[str, int] = {}
    indptr, indices = [0], []
    for text in texts:
        indices.extend(vocabulary.setdefault(gram, len(vocabulary)) for gram in trigrams(text))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(texts), max(len(vocabulary), 1)))


def query_coverage(texts: list[str | None], query: np.ndarray, title: np.ndarray,
                   chunk_rows: int = 32_768) -> np.ndarray:
    """For each row, the share of its query's trigrams present in its title (0 without a query).
    `query` and `title` index `texts`; each distinct text is split into trigrams once."""
    grams = gram_matrix(texts)
    sizes = np.asarray(grams.sum(axis=1)).ravel()
    out = np.zeros(len(query), dtype=np.float32)
    for start in range(0, len(query), chunk_rows):  # chunked: the gathered rows stay small on a large log
        rows = slice(start, start + chunk_rows)
        shared = np.asarray(grams[query[rows]].multiply(grams[title[rows]]).sum(axis=1)).ravel()
        out[rows] = shared / np.maximum(sizes[query[rows]], 1)
    return out
