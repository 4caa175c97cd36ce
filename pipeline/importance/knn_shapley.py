"""KNN-Shapley (Jia et al. 2019): the exact Shapley value of each training impression for a K-nearest-
neighbour click classifier, by the closed-form recursion over neighbours sorted by distance.

For one validation point with label y and training points sorted nearest first (alpha_1..alpha_N):
    s(alpha_N) = 1[y_alpha_N = y] / N
    s(alpha_i) = s(alpha_{i+1}) + (1[y_alpha_i = y] - 1[y_alpha_{i+1} = y]) / K * min(K, i) / i
and a point's value is the mean over validation points. An impression whose click disagrees with
the clicks of its look-alikes in the other slice gets a negative value.

Features: the encoder's query and title embeddings (concatenated, multiplied, or both) and a one-hot
of the position scaled by `position_weight`. The training slice is valued against the holdout slice
and the holdout slice against the training slice (each capped at `max_validation` points, drawn with
ctx.seed). Distances are computed and sorted for a block of validation points against all points
at once, the block sized so block x points stays under `max_pairs_per_block`: memory is bounded, and
no points x points matrix exists. With `scale_by_size`, values are multiplied by the number of points
valued, so both slices read in units of an equal share whatever their sizes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.importance.registry import Context, register

TEXT_FEATURES = ("concat", "product", "both")


def shapley_from_sorted(match: torch.Tensor, k: int) -> torch.Tensor:
    """The recursion for a block: match[v, r] = 1 when the r-th nearest point's label equals validation
    point v's. Returns the values in the same sorted order, shape (block, N), float64."""
    match = match.to(torch.float64)
    n = match.shape[1]
    rank = torch.arange(1, n, device=match.device, dtype=torch.float64)  # i = 1..N-1
    coef = torch.clamp(rank, max=float(k)) / (rank * k)
    step = (match[:, :-1] - match[:, 1:]) * coef  # s_i - s_{i+1}
    # s_i = s_N + sum_{j >= i} step_j: a reversed cumulative sum.
    tail = torch.flip(torch.cumsum(torch.flip(step, dims=[1]), dim=1), dims=[1])
    last = match[:, -1:] / n
    return torch.cat([tail + last, last], dim=1)


def knn_shapley(points: torch.Tensor, labels: torch.Tensor, val_points: torch.Tensor, val_labels: torch.Tensor,
                k: int, max_pairs_per_block: int) -> torch.Tensor:
    """Mean KNN-Shapley value of each of `points` over the validation points, float64, on points' device."""
    n = len(points)
    if n == 0 or len(val_points) == 0:
        raise ValueError("knn_shapley: need at least one point to value and one validation point")
    if k < 1:
        raise ValueError(f"knn_shapley: K must be at least 1, got {k}")
    block = max(1, int(max_pairs_per_block) // n)
    total = torch.zeros(n, dtype=torch.float64, device=points.device)
    for start in range(0, len(val_points), block):
        v, y = val_points[start:start + block], val_labels[start:start + block]
        distance = torch.cdist(v, points)
        # Stable sort on (distance, index) so ties are broken the same way on every run.
        order = torch.sort(distance, dim=1, stable=True).indices
        match = (labels[order] == y[:, None])
        values = shapley_from_sorted(match, k)
        # Each row of `order` is a permutation: scatter places every value exactly once.
        total += torch.zeros_like(values).scatter_(1, order, values).sum(dim=0)
    return total / len(val_points)


def feature_matrix(ctx: Context, index: np.ndarray) -> torch.Tensor:
    cfg = ctx.params["importance"]["estimators"]["knn_shapley"]
    x = ctx.data.x.subset(index).to(ctx.device)
    mode = str(cfg["text_features"])
    if mode not in TEXT_FEATURES:
        raise ValueError(f"knn_shapley.text_features must be one of {TEXT_FEATURES}, got {mode!r}")
    parts = []
    if mode in ("concat", "both"):
        parts += [x.query, x.title]
    if mode in ("product", "both"):
        parts.append(x.query * x.title)
    max_position = int(ctx.params["ranker"]["max_position"])
    one_hot = torch.nn.functional.one_hot(x.position.clamp(0, max_position), max_position + 1)
    parts.append(float(cfg["position_weight"]) * one_hot.to(x.query.dtype))
    return torch.cat(parts, dim=1).float()


def _validation(index: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    if cap > 0 and len(index) > cap:
        return np.sort(rng.choice(index, cap, replace=False))
    return index


@register("knn_shapley", cost_class="forward-only")
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["knn_shapley"]
    day = ctx.data
    train, holdout = day.train_index, day.holdout_index
    if len(train) == 0 or len(holdout) == 0:
        raise ValueError(f"knn_shapley: needs both a training slice ({len(train)} rows) and a holdout slice "
                         f"({len(holdout)} rows), each valued against the other")
    clicks = day.x.click.numpy()
    if clicks[train].sum() == 0:
        raise ValueError("knn_shapley: the training slice has no clicks")
    k, cap, pairs = int(cfg["k"]), int(cfg["max_validation"]), int(cfg["max_pairs_per_block"])
    rng = np.random.default_rng(ctx.seed)
    labels = day.x.click.to(ctx.device)
    values = np.zeros(len(day.impressions), dtype=np.float64)
    for valued, against in ((train, holdout), (holdout, train)):
        val = _validation(against, cap, rng)
        v = knn_shapley(feature_matrix(ctx, valued), labels[torch.as_tensor(valued, device=ctx.device)],
                        feature_matrix(ctx, val), labels[torch.as_tensor(val, device=ctx.device)], k, pairs)
        values[valued] = v.cpu().numpy() * (len(valued) if cfg["scale_by_size"] else 1.0)
    return pd.DataFrame({"event_id": day.impressions["event_id"].to_numpy(), "score": values})
