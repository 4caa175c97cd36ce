"""Ranking and click-prediction metrics on plain arrays.

Ranking metrics take `groups` (the request of each row) and work from each row's rank within its
group, computed once (`ranks_within`) and reusable for any subset of rows: a slice of whole
requests gives the usual metric, a slice of items (a category, new items) scores those items at
the rank the model gave them in the whole list. All of it is vectorised: no loop over requests.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

# Which way is better for each metric evaluate writes; the cut-off ones are named PREFIX_at_K.
DIRECTIONS = {"auc_click": "higher", "auc_purchase": "higher", "logloss_click": "lower",
              "ece_click": "lower", "mrr": "higher"}
CUTOFF_DIRECTIONS = {"ndcg": "higher", "recall": "higher"}


def direction_of(name: str) -> str | None:
    """'higher' or 'lower' for a metric evaluate writes, None for a name it never writes."""
    if name in DIRECTIONS:
        return DIRECTIONS[name]
    prefix, _, k = name.rpartition("_at_")
    return CUTOFF_DIRECTIONS.get(prefix) if k.isdigit() else None


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC; None when only one class is present (undefined, not 0.5)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    if len(labels) == 0:
        return None
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(log_loss(labels, p, labels=[0, 1]))


def _codes(groups) -> np.ndarray:
    return pd.factorize(np.asarray(groups), sort=False)[0]


def ranks_within(groups, scores) -> np.ndarray:
    """1-based rank of each row within its group by descending score.

    Ties in score are broken by row order, so the logged order never leaks into the metric's favour
    beyond what the scores say.
    """
    codes = _codes(groups)
    n = len(codes)
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64), codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if n else np.zeros(0, int)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n) - group_start + 1
    return ranks


def ndcg_at_k_from_ranks(groups, gains, ranks, k: int) -> float | None:
    """Mean NDCG@k over the groups with at least one positive gain; the ideal order of a group is its
    given rows sorted by gain and placed at ranks 1, 2, ..."""
    codes = _codes(groups)
    gains = np.asarray(gains, dtype=np.float64)
    ranks = np.asarray(ranks)
    if not (gains > 0).any():
        return None
    dcg = np.bincount(codes, weights=np.where(ranks <= k, gains / np.log2(ranks + 1.0), 0.0))
    ideal_ranks = ranks_within(codes, gains)
    idcg = np.bincount(codes, weights=np.where(ideal_ranks <= k, gains / np.log2(ideal_ranks + 1.0), 0.0))
    has_gain = idcg > 0
    return float(np.mean(dcg[has_gain] / idcg[has_gain]))


def mrr_from_ranks(groups, relevant, ranks) -> float | None:
    """Mean over groups with a relevant row of 1 / the rank of their best-ranked relevant row."""
    codes = _codes(groups)
    relevant = np.asarray(relevant).astype(bool)
    if not relevant.any():
        return None
    best = np.full(codes.max() + 1, np.inf)
    np.minimum.at(best, codes[relevant], np.asarray(ranks, dtype=np.float64)[relevant])
    best = best[np.isfinite(best)]
    return float(np.mean(1.0 / best))


def recall_at_k_from_ranks(groups, relevant, ranks, k: int) -> float | None:
    """Mean over groups with a relevant row of the share of their relevant rows ranked in the top k."""
    codes = _codes(groups)
    relevant = np.asarray(relevant).astype(bool)
    if not relevant.any():
        return None
    hits = np.bincount(codes, weights=relevant & (np.asarray(ranks) <= k))
    positives = np.bincount(codes, weights=relevant)
    has = positives > 0
    return float(np.mean(hits[has] / positives[has]))


def ndcg_at_k(groups: np.ndarray, gains: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Mean NDCG@k over the groups (requests) that have at least one positive gain."""
    return ndcg_at_k_from_ranks(groups, gains, ranks_within(groups, scores), k)


def mrr(groups: np.ndarray, relevant: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean reciprocal rank of the first relevant row, over the groups that have one."""
    return mrr_from_ranks(groups, relevant, ranks_within(groups, scores))


def recall_at_k(groups: np.ndarray, relevant: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Share of each group's relevant rows in its top k by score, averaged over groups that have one."""
    return recall_at_k_from_ranks(groups, relevant, ranks_within(groups, scores), k)


def calibration_table(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> pd.DataFrame:
    """Mean predicted vs observed rate in equal-width probability bins (the reliability diagram)."""
    p = np.asarray(probabilities, dtype=np.float64)
    bin_of = np.minimum((p * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": bin_of, "predicted": p, "observed": np.asarray(labels, dtype=np.float64)})
    table = frame.groupby("bin").agg(predicted=("predicted", "mean"), observed=("observed", "mean"),
                                     rows=("observed", "size")).reset_index()
    return table.round(6)


def ece(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float | None:
    """Expected calibration error: the row-weighted gap between predicted and observed rates per bin."""
    if len(labels) == 0:
        return None
    table = calibration_table(labels, probabilities, bins)
    return float((table["rows"] * (table["predicted"] - table["observed"]).abs()).sum() / table["rows"].sum())
