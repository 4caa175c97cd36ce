"""Scores -> training weights: temperature, clipping, mean 1 (weights only ever rescale the loss)."""
from __future__ import annotations

import numpy as np
import pandas as pd


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


def normalise(scores: np.ndarray, how: str, groups: np.ndarray) -> np.ndarray:
    """Put estimators on one scale before the temperature: ranks in (0, 1] or z-scores, per group."""
    if how == "none":
        return scores
    if how not in ("rank", "zscore"):
        raise ValueError(f"importance.normalise must be none, rank or zscore, got {how!r}")
    out = np.empty(len(scores), dtype=np.float64)
    for group in np.unique(groups):
        rows = groups == group
        values = scores[rows]
        if how == "rank":
            out[rows] = (np.argsort(np.argsort(values, kind="stable"), kind="stable") + 1) / len(values)
        else:
            spread = values.std()
            out[rows] = (values - values.mean()) / (spread if spread > 0 else 1.0)
    return out


def transform(scores: np.ndarray, cfg: dict, groups: np.ndarray | None = None,
              sessions: np.ndarray | None = None) -> np.ndarray:
    """The weight transform of params (importance section), in order: normalise, temperature and clip
    (to_weights), zero weight for the lowest `drop_lowest_percent` of scores and for every row of the
    sessions whose mean score is in the lowest `drop_sessions_percent`, then mean 1 again."""
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.zeros(len(scores), dtype=np.int64) if groups is None else np.asarray(groups)
    scaled = normalise(scores, cfg.get("normalise", "none"), groups)
    weights = to_weights(scaled, cfg["temperature"], tuple(cfg["clip"]), groups)
    drop = float(cfg.get("drop_lowest_percent", 0))
    if drop > 0:
        weights[pd.Series(scores).rank(method="first", pct=True).to_numpy() <= drop / 100] = 0.0
    drop_sessions = float(cfg.get("drop_sessions_percent", 0))
    if drop_sessions > 0 and sessions is not None:
        sessions = pd.Series(np.asarray(sessions))
        rank = pd.Series(scores).groupby(sessions).mean().rank(method="first", pct=True)
        weights[sessions.map(rank).to_numpy() <= drop_sessions / 100] = 0.0
    if not weights.any():
        raise ValueError("the weight transform gave every row weight 0; lower drop_lowest_percent or "
                         "drop_sessions_percent")
    return weights / weights.mean()
