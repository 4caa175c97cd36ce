"""What the estimator benchmark measures from scores and test metrics (BENCHMARK_PROTOCOL.md), and the
rule that picks the estimator the retrain uses."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

# The retrain's held-out metrics every benchmark reports; ndcg_at_K_true joins them when the log has truth.
TEST_METRICS = ("auc_click", "logloss_click", "ndcg_at_10")


def two_means_low(scores: np.ndarray) -> np.ndarray:
    """The low cluster of the exact 1-D 2-means split of `scores` (the split of the sorted values that
    minimises the within-cluster sum of squares), as a mask."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    n = len(s)
    low = np.zeros(n, bool)
    if n < 2 or s[0] == s[-1]:
        return low
    prefix, prefix_sq = np.cumsum(s), np.cumsum(s * s)
    k = np.arange(1, n)  # k values in the low cluster
    sse_low = prefix_sq[k - 1] - prefix[k - 1] ** 2 / k
    high_sum, high_sq = prefix[-1] - prefix[k - 1], prefix_sq[-1] - prefix_sq[k - 1]
    sse_high = high_sq - high_sum ** 2 / (n - k)
    valid = s[k - 1] < s[k]  # a split between equal values would cut a tie in two
    cut = int(k[valid][np.argmin((sse_low + sse_high)[valid])])
    low[order[:cut]] = True
    return low


def _thin(xs: np.ndarray, ys: np.ndarray, points: int) -> tuple[list, list]:
    keep = np.unique(np.linspace(0, len(xs) - 1, min(points, len(xs))).round().astype(int))
    return [round(float(v), 5) for v in xs[keep]], [round(float(v), 5) for v in ys[keep]]


def detection(scores: np.ndarray, is_noise: np.ndarray, curve_points: int) -> tuple[dict, dict | None]:
    """({auroc, auprc, f1_two_means, recall_at_noise}, {roc, pr} curves) of low scores as noise; None
    where undefined (no noise, or nothing but noise)."""
    is_noise = np.asarray(is_noise, bool)
    if is_noise.all() or not is_noise.any():
        return {"auroc": None, "auprc": None, "f1_two_means": None, "recall_at_noise": None}, None
    suspicion = -np.asarray(scores, dtype=np.float64)
    flagged = two_means_low(scores)
    hits = int((flagged & is_noise).sum())
    f1 = 2 * hits / (int(flagged.sum()) + int(is_noise.sum()))
    k = int(is_noise.sum())
    lowest = np.argsort(-suspicion, kind="stable")[:k]  # the k lowest-scored rows (ties by row order)
    fpr, tpr, _ = roc_curve(is_noise, suspicion)
    precision, recall, _ = precision_recall_curve(is_noise, suspicion)
    roc_x, roc_y = _thin(fpr, tpr, curve_points)
    pr_x, pr_y = _thin(recall[::-1], precision[::-1], curve_points)
    values = {"auroc": float(roc_auc_score(is_noise, suspicion)),
              "auprc": float(average_precision_score(is_noise, suspicion)),
              "f1_two_means": float(f1), "recall_at_noise": float(is_noise[lowest].mean())}
    return {name: round(v, 6) for name, v in values.items()}, \
        {"roc": {"fpr": roc_x, "tpr": roc_y}, "pr": {"recall": pr_x, "precision": pr_y}}


def auroc_by_kind(scores: np.ndarray, kind: np.ndarray) -> dict:
    """Per noise kind, the AUROC of low scores for that kind's rows against the clean rows alone."""
    kind = np.asarray(kind, dtype=object)
    suspicion, clean = -np.asarray(scores, dtype=np.float64), kind == ""
    out = {}
    for name in sorted(set(kind[~clean])):
        rows = clean | (kind == name)
        out[str(name)] = round(float(roc_auc_score(kind[rows] == name, suspicion[rows])), 6) if clean.any() else None
    return out


NO_COST = "the noise did not cost the unweighted ranker anything on this metric"


def noise_cost(unweighted: float | None, clean: float | None, higher_is_better: bool = True) -> float | None:
    """What the noise cost the unweighted ranker on a metric, positive when the clean ranker is better
    (clean - unweighted, or unweighted - clean for a metric where lower is better); None when undefined."""
    if unweighted is None or clean is None:
        return None
    return (clean - unweighted) if higher_is_better else (unweighted - clean)


UNCLEAR_COST = "not enough evidence that the noise costs the unweighted ranker anything on this metric"


def cost_standard_error(unweighted: list[float], clean: list[float]) -> float | None:
    """Standard error of the noise's cost (clean - unweighted) over the paired seeds; None with fewer than
    two seeds or a seed without a value."""
    if not len(unweighted) == len(clean) >= 2 or any(v is None for v in (*unweighted, *clean)):
        return None
    d = np.asarray(clean, dtype=np.float64) - np.asarray(unweighted, dtype=np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d)))


def recovery(weighted: float | None, unweighted: float | None, clean: float | None, min_gap: float,
             higher_is_better: bool = True) -> float | None:
    """(weighted - unweighted) / (clean - unweighted); None when the noise costs the unweighted ranker
    less than `min_gap` in the metric's better direction (NO_COST). A clean ranker no better than the
    unweighted one would flip the ratio's sign: a weighted ranker better than the unweighted one would
    get a negative recovery, so the sign is checked, not only the size of the gap."""
    cost = noise_cost(unweighted, clean, higher_is_better)
    if weighted is None or cost is None or cost <= 0 or cost < min_gap:
        return None
    return round((weighted - unweighted) / (clean - unweighted), 6)


def recovery_standard_error(weighted: list[float], unweighted: list[float], clean: list[float],
                            min_gap: float, higher_is_better: bool = True) -> float | None:
    """Standard error of the recovery from per-seed test metrics, paired by seed (each seed's weighted,
    unweighted and clean retrains share their initialisation and batch order). The delta method on the
    ratio of mean differences; None with fewer than two seeds, a seed without a value, or an undefined
    recovery (the noise costs less than `min_gap` in the metric's better direction)."""
    if not len(weighted) == len(unweighted) == len(clean) >= 2 or \
            any(v is None for v in (*weighted, *unweighted, *clean)):
        return None
    w, u, c = (np.asarray(v, dtype=np.float64) for v in (weighted, unweighted, clean))
    gap = float((c - u).mean())
    cost = gap if higher_is_better else -gap
    if cost <= 0 or cost < min_gap:
        return None
    ratio = float((w - u).mean()) / gap
    residual = (w - u) - ratio * (c - u)
    return round(float(residual.std(ddof=1) / np.sqrt(len(w)) / abs(gap)), 6)


def select(estimators: dict, max_cost_ratio: float, tie_tolerance: float,
           beat_baselines: bool = False, metric: str | None = None,
           undefined_reason: str | None = None) -> tuple[str | None, str]:
    """(name, reason): the highest recovery among the estimators whose cost ratio is within budget; an
    estimator within `tie_tolerance` of the best and cheaper wins the tie. With `beat_baselines`, only an
    estimator whose recovery is above every baseline's (uniform weights: 0; random scores, which get the
    same transform tries) can win: below that, its weights help no more than chance.

    Each entry's `recovery` is the one on the benchmark's primary metric, named by `metric` in the
    reason; `undefined_reason` says why recoveries are undefined when the reason lists some."""
    ran = {name: e for name, e in estimators.items() if e["kind"] == "estimator" and not e.get("error")}
    failed = sorted(name for name, e in estimators.items() if e["kind"] == "estimator" and e.get("error"))
    over = sorted(name for name, e in ran.items() if e["cost_ratio"] is None or e["cost_ratio"] > max_cost_ratio)
    undefined = sorted(name for name, e in ran.items() if name not in over and e["recovery"] is None)
    eligible = {name: e for name, e in ran.items() if name not in over and e["recovery"] is not None}
    floor = max([e["recovery"] for e in estimators.values() if e["kind"] == "baseline" and not e.get("error")
                 and e["recovery"] is not None] or [0.0]) if beat_baselines else None
    below = sorted(name for name, e in eligible.items() if floor is not None and e["recovery"] <= floor)
    eligible = {name: e for name, e in eligible.items() if name not in below}
    notes = ([f"over the cost budget ({max_cost_ratio:g} epochs): {', '.join(over)}"] if over else []) \
        + ([f"failed: {', '.join(failed)}"] if failed else []) \
        + ([f"recovery undefined{f' ({undefined_reason})' if undefined_reason else ''}: {', '.join(undefined)}"]
           if undefined else []) \
        + ([f"recovery not above the baselines' best ({floor:.3f}): {', '.join(below)}"] if below else [])
    if not eligible:
        why = "no estimator has a recovery within the cost budget" + \
            (" above the baselines'" if floor is not None else "")
        return None, why + (f" ({'; '.join(notes)})" if notes else "")
    best = max(e["recovery"] for e in eligible.values())
    tied = [name for name, e in eligible.items() if e["recovery"] >= best - tie_tolerance]
    winner = min(tied, key=lambda name: (eligible[name]["cost_ratio"], name))
    e = eligible[winner]
    se = f" ± {e['recovery_se']:.3f}" if e.get("recovery_se") is not None else ""
    on = f" on {metric}" if metric else ""
    reason = (f"{winner}: recovery{on} {e['recovery']:.3f}{se} at cost ratio {e['cost_ratio']:.2f}, "
              f"the highest among {len(eligible)} estimators within the cost budget ({max_cost_ratio:g} epochs)")
    if len(tied) > 1:
        others = ", ".join(f"{name} {eligible[name]['recovery']:.3f} at {eligible[name]['cost_ratio']:.2f}"
                           for name in tied if name != winner)
        reason += f"; tied within {tie_tolerance:g} with {others}, and cheaper"
    runner = sorted((n for n in eligible if n not in tied), key=lambda n: -eligible[n]["recovery"])[:1]
    if runner:
        reason += f"; next best {runner[0]} {eligible[runner[0]]['recovery']:.3f}"
    return winner, reason + (f" ({'; '.join(notes)})" if notes else "")
