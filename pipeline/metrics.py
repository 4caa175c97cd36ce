"""Ranking and click-prediction metrics on plain arrays."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score


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


def ndcg_at_k(groups: np.ndarray, gains: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Mean NDCG@k over the groups (requests) that have at least one positive gain.

    Ties in score are broken by row order, so the logged order never leaks into the metric's favour
    beyond what the scores say.
    """
    frame = pd.DataFrame({"g": groups, "gain": np.asarray(gains, dtype=np.float64),
                          "s": np.asarray(scores, dtype=np.float64)})
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for _, grp in frame.groupby("g", sort=False):
        gain = grp["gain"].to_numpy()
        if gain.max() <= 0:
            continue
        ranked = gain[np.argsort(-grp["s"].to_numpy(), kind="stable")][:k]
        ideal = np.sort(gain)[::-1][:k]
        values.append(float((ranked * discounts[:len(ranked)]).sum() / (ideal * discounts[:len(ideal)]).sum()))
    return float(np.mean(values)) if values else None


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
