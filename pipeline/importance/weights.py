"""Scores -> training weights: temperature, clipping, mean 1 (weights only ever rescale the loss)."""
from __future__ import annotations

import numpy as np


def to_weights(scores: np.ndarray, temperature: float, clip: tuple[float, float],
               groups: np.ndarray | None = None) -> np.ndarray:
    """exp((score - group median) / temperature), clipped, rescaled to mean 1 within each group.

    Grouping by the label keeps the class balance: a loss-based score is lower for every positive
    (rare clicks are harder to predict), and without it the weights would mostly mute the clicks.
    """
    if temperature <= 0:
        raise ValueError(f"importance.temperature must be > 0, got {temperature}")
    low, high = clip
    if not 0 <= low <= high:
        raise ValueError(f"importance.clip must be [low, high] with 0 <= low <= high, got {clip}")
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.zeros(len(scores), dtype=np.int64) if groups is None else np.asarray(groups)
    weights = np.ones(len(scores), dtype=np.float64)
    for group in np.unique(groups):
        rows = groups == group
        raw = np.exp(np.clip((scores[rows] - np.median(scores[rows])) / temperature, -50, 50))
        clipped = np.clip(raw / raw.mean(), low, high)
        weights[rows] = clipped / clipped.mean()
    return weights
