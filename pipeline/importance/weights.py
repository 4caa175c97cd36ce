"""Scores -> training weights: temperature, clipping, mean 1 (weights only ever rescale the loss)."""
from __future__ import annotations

import numpy as np


def to_weights(scores: np.ndarray, temperature: float, clip: tuple[float, float]) -> np.ndarray:
    """exp((score - median) / temperature), clipped, then rescaled to mean 1 over the rows given."""
    if temperature <= 0:
        raise ValueError(f"importance.temperature must be > 0, got {temperature}")
    low, high = clip
    if not 0 <= low <= high:
        raise ValueError(f"importance.clip must be [low, high] with 0 <= low <= high, got {clip}")
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    # Centre on the median so the temperature acts on spread, not on the loss's absolute level.
    raw = np.exp(np.clip((scores - np.median(scores)) / temperature, -50, 50))
    weights = np.clip(raw / raw.mean(), low, high)
    return weights / weights.mean()
