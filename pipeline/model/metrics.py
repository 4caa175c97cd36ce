"""Ranking and click-prediction metrics on plain arrays.

Ranking metrics take `groups` (the request of each row) and work from each row's rank within its
group, computed once (`ranks_within`) and reusable for any subset of rows: a slice of whole
requests gives the usual metric, a slice of items (a category, new items) scores those items at
the rank the model gave them in the whole list. All of it is vectorised: no loop over requests.

Ties in score are broken by a fixed, seeded random permutation of the rows, never by row order: the
rows come in the logged order, and breaking ties by it would hand a constant score the logging
policy's ranking. A constant score therefore ranks like a random shuffle (its expected NDCG is the
random baseline's), and the same seed gives the same ranks on every run.

The `*_per_group` functions return one value per request (NaN where undefined), the unit the paired
bootstrap (`bootstrap_counts`) resamples.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# Which way is better for each metric evaluate writes; the cut-off ones are named PREFIX_at_K, and the
# ranking ones may carry a suffix naming their gain (ndcg_at_10_true: the simulator's true relevance;
# ndcg_at_10_ips: clicks weighted by the inverse examination propensity).
DIRECTIONS = {"auc_click": "higher", "auc_purchase": "higher", "logloss_click": "lower",
              "ece_click": "lower", "mrr": "higher", "score_spread": "higher"}
CUTOFF_DIRECTIONS = {"ndcg": "higher", "recall": "higher"}
CUTOFF_SUFFIXES = ("true", "ips")
TIE_SEED = 0  # default seed of the tie-breaking permutation (evaluate passes its own from params)


def direction_of(name: str) -> str | None:
    """'higher' or 'lower' for a metric evaluate writes, None for a name it never writes."""
    if name in DIRECTIONS:
        return DIRECTIONS[name]
    prefix, _, k = name.rpartition("_at_")
    k, _, suffix = k.partition("_")
    if suffix and suffix not in CUTOFF_SUFFIXES:
        return None
    return CUTOFF_DIRECTIONS.get(prefix) if k.isdigit() else None


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """ROC AUC; None when only one class is present (undefined, not 0.5). `weights`: a count per row
    (a bootstrap resample), the same as repeating each row that many times.

    The Mann-Whitney form (a tie counts half), in numpy: the bootstrap calls it hundreds of times per
    evaluate, where scikit-learn's per-call input checks cost more than the sum itself."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = weights > 0
    labels, scores, weights = labels[keep], scores[keep], weights[keep]
    if len(np.unique(labels)) < 2:
        return None
    order = np.argsort(scores, kind="stable")
    scores, positive, weights = scores[order], labels[order] == 1, weights[order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # first row of each distinct score
    pos = np.add.reduceat(np.where(positive, weights, 0.0), starts)
    neg = np.add.reduceat(np.where(positive, 0.0, weights), starts)
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def logloss(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """Mean binary cross-entropy (weighted by `weights`), probabilities clipped to [1e-7, 1 - 1e-7]."""
    if len(labels) == 0 or (weights is not None and not np.asarray(weights).sum() > 0):
        return None
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(losses, weights=weights))


def _codes(groups) -> np.ndarray:
    return pd.factorize(np.asarray(groups), sort=False)[0]


def tie_breaker(n: int, seed: int = TIE_SEED) -> np.ndarray:
    """A fixed random permutation of n rows: the secondary sort key of `ranks_within`."""
    return np.random.default_rng(seed).permutation(n)


def ranks_within(groups, scores, seed: int = TIE_SEED) -> np.ndarray:
    """1-based rank of each row within its group by descending score.

    Ties in score are broken by a seeded random permutation of the rows (`tie_breaker`), not by row
    order: rows arrive in the logged order, so a constant score would otherwise get the logging
    policy's ranking for free.
    """
    codes = _codes(groups)
    n = len(codes)
    order = np.lexsort((tie_breaker(n, seed), -np.asarray(scores, dtype=np.float64), codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if n else np.zeros(0, int)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n) - group_start + 1
    return ranks


def _mean_defined(values: np.ndarray) -> float | None:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else None


def ndcg_per_group(codes, gains, ranks, k: int, n_groups: int | None = None) -> np.ndarray:
    """NDCG@k of each group (codes 0..n_groups-1), NaN for a group without a positive gain. The ideal
    order of a group is its given rows sorted by gain and placed at ranks 1, 2, ..."""
    codes = np.asarray(codes)
    gains = np.asarray(gains, dtype=np.float64)
    ranks = np.asarray(ranks)
    n_groups = (codes.max() + 1 if len(codes) else 0) if n_groups is None else n_groups
    dcg = np.bincount(codes, weights=np.where(ranks <= k, gains / np.log2(ranks + 1.0), 0.0), minlength=n_groups)
    ideal_ranks = ranks_within(codes, gains)
    idcg = np.bincount(codes, weights=np.where(ideal_ranks <= k, gains / np.log2(ideal_ranks + 1.0), 0.0),
                       minlength=n_groups)
    out = np.full(n_groups, np.nan)
    has_gain = idcg > 0
    out[has_gain] = dcg[has_gain] / idcg[has_gain]
    return out


def mrr_per_group(codes, relevant, ranks, n_groups: int | None = None) -> np.ndarray:
    """1 / the rank of each group's best-ranked relevant row; NaN for a group without one."""
    codes = np.asarray(codes)
    relevant = np.asarray(relevant).astype(bool)
    n_groups = (codes.max() + 1 if len(codes) else 0) if n_groups is None else n_groups
    best = np.full(n_groups, np.inf)
    np.minimum.at(best, codes[relevant], np.asarray(ranks, dtype=np.float64)[relevant])
    return np.where(np.isfinite(best), 1.0 / best, np.nan)


def recall_per_group(codes, relevant, ranks, k: int, n_groups: int | None = None) -> np.ndarray:
    """Share of each group's relevant rows ranked in its top k; NaN for a group without one."""
    codes = np.asarray(codes)
    relevant = np.asarray(relevant).astype(bool)
    n_groups = (codes.max() + 1 if len(codes) else 0) if n_groups is None else n_groups
    hits = np.bincount(codes, weights=relevant & (np.asarray(ranks) <= k), minlength=n_groups)
    positives = np.bincount(codes, weights=relevant, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, hits / positives, np.nan)


def ndcg_at_k_from_ranks(groups, gains, ranks, k: int) -> float | None:
    """Mean NDCG@k over the groups with at least one positive gain."""
    if not (np.asarray(gains, dtype=np.float64) > 0).any():
        return None
    return _mean_defined(ndcg_per_group(_codes(groups), gains, ranks, k))


def mrr_from_ranks(groups, relevant, ranks) -> float | None:
    """Mean over groups with a relevant row of 1 / the rank of their best-ranked relevant row."""
    if not np.asarray(relevant).astype(bool).any():
        return None
    return _mean_defined(mrr_per_group(_codes(groups), relevant, ranks))


def recall_at_k_from_ranks(groups, relevant, ranks, k: int) -> float | None:
    """Mean over groups with a relevant row of the share of their relevant rows ranked in the top k."""
    if not np.asarray(relevant).astype(bool).any():
        return None
    return _mean_defined(recall_per_group(_codes(groups), relevant, ranks, k))


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


def ece(labels: np.ndarray, probabilities: np.ndarray, bins: int, weights: np.ndarray | None = None) -> float | None:
    """Expected calibration error: the row-weighted gap between predicted and observed rates per bin."""
    if len(labels) == 0:
        return None
    if weights is None:
        table = calibration_table(labels, probabilities, bins)
        return float((table["rows"] * (table["predicted"] - table["observed"]).abs()).sum() / table["rows"].sum())
    p = np.asarray(probabilities, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if not w.sum() > 0:
        return None
    bin_of = np.minimum((p * bins).astype(int), bins - 1)
    gap = (np.bincount(bin_of, weights=w * p, minlength=bins)
           - np.bincount(bin_of, weights=w * np.asarray(labels, dtype=np.float64), minlength=bins))
    return float(np.abs(gap).sum() / w.sum())


# --- position debiasing ---------------------------------------------------------------------------

def thinned(n: int, points: int) -> np.ndarray:
    """Indices of at most `points` of n curve points, evenly spread, the first and the last always kept."""
    return np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))


def roc_points(labels: np.ndarray, scores: np.ndarray, points: int) -> list[dict]:
    """scikit-learn's ROC curve (false and true positive rate per score threshold), thinned to at most
    `points` of its points; empty where one class is missing. The first threshold, above every score,
    is null (JSON has no infinity)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return []
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]),
             "threshold": float(thresholds[i]) if np.isfinite(thresholds[i]) else None}
            for i in thinned(len(fpr), points)]


def precision_recall_points(labels: np.ndarray, scores: np.ndarray, points: int) -> list[dict]:
    """scikit-learn's precision-recall curve, recall rising, thinned to at most `points` of its points;
    empty where one class is missing. Its last point (recall 0, precision 1) has no threshold: null."""
    from sklearn.metrics import precision_recall_curve

    if len(np.unique(labels)) < 2:
        return []
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    thresholds = np.r_[thresholds, np.nan]
    order = np.arange(len(recall))[::-1]
    return [{"recall": float(recall[i]), "precision": float(precision[i]),
             "threshold": float(thresholds[i]) if np.isfinite(thresholds[i]) else None}
            for i in order[thinned(len(order), points)]]


def examination_eta(position, clicked, min_rows: int, max_position: int) -> dict:
    """The exponent eta of the examination model P(examine | position p) = 1 / p ** eta, fitted as the
    least-squares slope of log CTR against log position (weighted by the rows at each position), over
    positions 1..max_position with at least `min_rows` rows and a click.

    Simple and biased the usual way: the logging policy puts relevant items higher, so part of the
    CTR's fall with position is relevance, and eta comes out on the high side (deeper clicks are
    weighted up a little too much). Clipped to >= 0; 0 (no correction) when fewer than two positions
    qualify."""
    position = np.asarray(position, dtype=np.int64)
    clicked = np.asarray(clicked, dtype=np.float64)
    inside = (position >= 1) & (position <= max_position)
    rows = np.bincount(position[inside], minlength=max_position + 1)[1:]
    clicks = np.bincount(position[inside], weights=clicked[inside], minlength=max_position + 1)[1:]
    usable = (rows >= min_rows) & (clicks > 0)
    note = {"positions_used": int(usable.sum())}
    if usable.sum() < 2:
        return {"eta": 0.0, **note, "note": "fewer than two positions with enough rows and a click: no correction"}
    x = np.log(np.arange(1, max_position + 1)[usable])
    y = np.log(clicks[usable] / rows[usable])
    w = rows[usable].astype(np.float64)
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    slope = float(np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2))
    return {"eta": round(max(0.0, -slope), 6), **note}


def ips_gains(clicked, position, eta: float, min_propensity: float, logged=None) -> np.ndarray:
    """Click / examination propensity per row: the propensity is 1 / position ** eta, or `logged` where
    that is given and valid (in (0, 1]); clipped below at `min_propensity` to bound the variance."""
    propensity = np.asarray(position, dtype=np.float64) ** -float(eta)
    if logged is not None:
        logged = np.asarray(logged, dtype=np.float64)
        valid = np.isfinite(logged) & (logged > 0) & (logged <= 1)
        propensity = np.where(valid, logged, propensity)
    return np.asarray(clicked, dtype=np.float64) / np.maximum(propensity, min_propensity)


# --- spread of a ranking score within requests ----------------------------------------------------

def score_spread(groups, scores) -> dict:
    """How much a ranking score varies within requests of two rows or more: `std` is the mean over
    those requests of the score's standard deviation, `distinct_share` the mean share of distinct
    values among a request's rows, `constant_requests` the share of requests whose rows all tie.
    A constant score has std 0 and ranks nothing."""
    codes = _codes(groups)
    s = np.asarray(scores, dtype=np.float64)
    n = np.bincount(codes).astype(np.float64)
    if not len(n) or not (n >= 2).any():
        return {"std": None, "distinct_share": None, "constant_requests": None, "requests": 0}
    mean = np.bincount(codes, weights=s) / n
    var = np.bincount(codes, weights=(s - mean[codes]) ** 2) / n
    distinct = pd.DataFrame({"g": codes, "s": s}).groupby("g")["s"].nunique().to_numpy()
    many = n >= 2
    return {"std": float(np.sqrt(var[many]).mean()), "distinct_share": float((distinct[many] / n[many]).mean()),
            "constant_requests": float((distinct[many] == 1).mean()), "requests": int(many.sum())}


# --- paired bootstrap over requests ---------------------------------------------------------------

def bootstrap_counts(n_groups: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_groups): how often each request is drawn in each resample (n_groups draws with
    replacement). The same counts serve every model, so differences are paired."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    return np.stack([np.bincount(row, minlength=n_groups) for row in draws]) if resamples else \
        np.zeros((0, n_groups), dtype=np.int64)


def interval(values, point, level: float) -> dict | None:
    """Percentile interval of bootstrap `values` (NaN ones, resamples where the metric was undefined,
    dropped) around the full-sample `point`."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if point is None or not len(values):
        return None
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(values, [tail, 1.0 - tail])
    return {"diff": round(float(point), 6), "lower": round(float(lower), 6), "upper": round(float(upper), 6),
            "resamples": int(len(values))}


def paired_group_interval(a, b, counts: np.ndarray, level: float) -> dict | None:
    """Bootstrap interval of mean(a) - mean(b) over groups defined in both (per-group values, NaN where
    undefined), resampling groups with `counts`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = ~np.isnan(a) & ~np.isnan(b)
    if not both.any():
        return None
    d = np.where(both, a - b, 0.0)
    c = counts * both
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = (c @ d) / c.sum(axis=1)
    return interval(diffs, float(d[both].mean()), level)


def paired_row_interval(metric, codes, counts: np.ndarray, level: float) -> dict | None:
    """Bootstrap interval of a difference `metric(weights)` computed on rows (weights None: the full
    sample, else each row's request count in a resample); `metric` returns None where undefined."""
    point = metric(None)
    if point is None:
        return None
    diffs = [metric(row_counts[codes]) for row_counts in counts]
    return interval([np.nan if d is None else d for d in diffs], point, level)
