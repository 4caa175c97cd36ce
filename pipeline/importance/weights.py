"""Scores -> training weights: temperature, clipping, drop rules, cluster representatives, mean 1."""
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


def cluster_representatives(scores: np.ndarray, vectors: np.ndarray, cfg: dict, seed: int) -> np.ndarray:
    """Rows to keep: in each k-means cluster of `vectors`, the best-scored `keep_percent` (at least one).

    Dropping the lowest scores over the whole log can empty a region of the query-item space (a rare
    category whose rows all look hard); pruning within clusters keeps every region represented, as in
    prototype-based data pruning (Sorscher et al. 2022)."""
    from sklearn.cluster import KMeans

    clusters, keep = int(cfg["clusters"]), float(cfg["keep_percent"])
    if clusters < 1:
        raise ValueError(f"importance.cluster_representatives.clusters must be at least 1, got {clusters}")
    if not 0 < keep <= 100:
        raise ValueError(f"importance.cluster_representatives.keep_percent must be in (0, 100], got {keep}")
    clusters = min(clusters, len(scores))
    labels = KMeans(n_clusters=clusters, n_init=1, max_iter=int(cfg.get("iterations", 50)),
                    random_state=seed).fit_predict(np.asarray(vectors, dtype=np.float32))
    kept = np.zeros(len(scores), dtype=bool)
    for cluster in range(clusters):
        rows = np.flatnonzero(labels == cluster)
        if len(rows):
            best_first = rows[np.argsort(-scores[rows], kind="stable")]
            kept[best_first[:max(1, int(np.ceil(len(rows) * keep / 100)))]] = True
    return kept


# Why a drop rule gave a row weight 0 (DROPPED_BY[code]); code 0: no rule did.
DROPPED_BY = ("", "dropped: lowest scores (drop_lowest_percent)", "dropped: low-scoring session (drop_sessions_percent)",
              "dropped: not a cluster representative (cluster_representatives)")


def transform(scores: np.ndarray, cfg: dict, groups: np.ndarray | None = None,
              sessions: np.ndarray | None = None, vectors: np.ndarray | None = None,
              seed: int = 0) -> np.ndarray:
    """`explained_transform` without the reasons."""
    return explained_transform(scores, cfg, groups, sessions, vectors, seed)[0]


def explained_transform(scores: np.ndarray, cfg: dict, groups: np.ndarray | None = None,
                        sessions: np.ndarray | None = None, vectors: np.ndarray | None = None,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weights, dropped): the weight transform of params (importance section), in order: normalise, temperature and clip
    (to_weights), zero weight for the lowest `drop_lowest_percent` of scores within each group, for every row of the
    sessions whose mean score is in the lowest `drop_sessions_percent`, and for the rows that are not
    among their k-means cluster's best (`cluster_representatives`, on `vectors`), then mean 1 again.
    `dropped` is each row's first drop rule, as an index into DROPPED_BY."""
    scores = np.asarray(scores, dtype=np.float64)
    dropped = np.zeros(len(scores), dtype=np.int8)
    groups = np.zeros(len(scores), dtype=np.int64) if groups is None else np.asarray(groups)
    scaled = normalise(scores, cfg.get("normalise", "none"), groups)
    weights = to_weights(scaled, cfg["temperature"], tuple(cfg["clip"]), groups)
    drop = float(cfg.get("drop_lowest_percent", 0))
    if drop > 0:
        # Within each group, as the weights are balanced: clicks score lower than non-clicks under most
        # estimators, and a drop across labels would remove clicks first.
        rank = pd.Series(scores).groupby(groups).rank(method="first", pct=True).to_numpy()
        _drop(weights, dropped, rank <= drop / 100, 1)
    drop_sessions = float(cfg.get("drop_sessions_percent", 0))
    if drop_sessions > 0 and sessions is not None:
        sessions = pd.Series(np.asarray(sessions))
        rank = pd.Series(scores).groupby(sessions).mean().rank(method="first", pct=True)
        _drop(weights, dropped, sessions.map(rank).to_numpy() <= drop_sessions / 100, 2)
    representatives = cfg.get("cluster_representatives") or {}
    if representatives.get("clusters"):
        if vectors is None:
            raise ValueError("importance.cluster_representatives needs the rows' embeddings")
        _drop(weights, dropped, ~cluster_representatives(scores, vectors, representatives, seed), 3)
    if not weights.any():
        raise ValueError("the weight transform gave every row weight 0; lower drop_lowest_percent or "
                         "drop_sessions_percent")
    return weights / weights.mean(), dropped


def _drop(weights: np.ndarray, dropped: np.ndarray, rows: np.ndarray, rule: int) -> None:
    dropped[rows & (dropped == 0)] = rule
    weights[rows] = 0.0


def log_weights(impressions: pd.DataFrame, scores: np.ndarray, cfg: dict, vectors: np.ndarray | None = None,
                seed: int = 0) -> np.ndarray:
    """`transform` for a log's rows: grouped by cfg's balance_by column, sessions from session_id."""
    return explained_log_weights(impressions, scores, cfg, vectors, seed)[0]


def explained_log_weights(impressions: pd.DataFrame, scores: np.ndarray, cfg: dict,
                          vectors: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`explained_transform` for a log's rows."""
    groups = impressions[cfg["balance_by"]].to_numpy() if cfg.get("balance_by") else None
    sessions, _ = pd.factorize(impressions["session_id"])  # integer codes: no Python string per row
    return explained_transform(scores, cfg, groups, sessions, vectors, seed)
