"""KNN-Shapley (Jia et al. 2019, "Efficient task-specific data valuation for nearest neighbor algorithms",
VLDB): the Shapley value of each impression for a K-nearest-neighbour click classifier, by the closed-form
recursion over the points sorted by distance to each validation point, truncated to the M nearest.

Exact recursion. For one validation point with label y and the N points to value sorted nearest first
(alpha_1..alpha_N), with m_i = 1[y_alpha_i = y]:
    s(alpha_N) = m_N / N
    s(alpha_i) = s(alpha_{i+1}) + (m_i - m_{i+1}) / K * min(K, i) / i
A point's value is the mean over validation points. An impression whose click disagrees with the clicks
of its look-alikes in the other slice gets a negative value.

Truncation to the M nearest (knob `neighbours`; M is at least K). Unrolling the recursion beyond rank K,
    s(alpha_i) = m_i / i - sum_{j > i} m_j / (j (j - 1))      for i >= K,
and since sum_{j > i} 1 / (j (j - 1)) = 1/i - 1/N, a value at rank i > M lies in [0, 1/M] when its label
matches and in [-1/M, 0] when it does not. So only the M nearest need their exact rank (torch.topk, not
a sort of all N). Beyond rank M the labels are replaced by p, the share of matching labels among the
N - M points past rank M (known exactly from the label counts), and 1/i by its mean c over the ranks
M+1..N:
    s^(alpha_M) = m_M / M - p (1/M - 1/N), then the recursion above for the ranks below M;
    s^(alpha_i) = (m_i - p) c + p / N      for i > M, c = (H_N - H_M) / (N - M) (H: harmonic numbers).
Error bound: the recursion below M is exact up to the shift s^(alpha_M) - s(alpha_M), which is
sum_{j > M} (m_j - p) / (j (j - 1)), at most max(p, 1 - p) (1/M - 1/N) < 1/M in size; past rank M the
estimate lies in the same interval ([0, 1/M] or [-1/M, 0]) as the exact value. Every value, and so their
mean over the validation points, is within 1/M of the exact one: the eps-approximation of Jia et al.
with eps = 1/M (their K* = max(K, ceil(1/eps))). Their algorithm sets the values past rank M to zero,
with the same bound; the estimate above keeps a point's label information for the validation points it
is far from (each point is among the M nearest of only about M x validation points / N of them), which
tracked the exact values more closely on a simulated log (correlation 0.95 against 0.90 at M = 100).
`neighbours: 0` gives the exact values (a stable sort of all N, ties broken by index).

Features: the encoder's query and title embeddings (concatenated, multiplied, or both) and a one-hot of
the position scaled by w = `position_weight`, which puts 2 w^2 between the squared distance of rows at
different positions. With `projection_dim` r > 0 the text vector is multiplied by a Gaussian random
matrix with entries N(0, 1/r), drawn from ctx.seed (Johnson-Lindenstrauss: squared distances are kept
within a factor 1 +- eps with high probability for r of order log(n) / eps^2), so a distance costs r
multiply-adds instead of 2 x 384; the unique texts are projected and the rows gather their projections. A
random projection needs no fit on the log, and its values tracked the exact ones more closely than those
of PCA at the same r on a simulated log. The position stays exact: the search first looks among the
rows at the validation point's position, and searches all rows only when the M-th nearest there is at
least 2 w^2 away (rows elsewhere are at least 2 w^2 away). With w = 2, 2 w^2 = 8 is the largest squared
distance between two concatenations of unit-norm query and title vectors, so a validation point's
neighbours are the rows at its position (a KNN per position, which holds the position's click rate
fixed), and a search covers about 1/17 of the rows of a simulated log with 20 positions; there the
exact values' detection AUROC was the same as with w = 1 (0.665).

Validation: the training slice is valued against the holdout slice and the holdout slice against the
training slice, each against at most `max_validation` of the other slice's points, drawn with ctx.seed.
Distances are computed for a block of validation points against the points searched at once, the block
sized so block x points stays under `max_pairs_per_block`. With `scale_by_size`, values are multiplied by
the number of points valued, so both slices read in units of an equal share.

Sharding: the projection, the validation points and their neighbours always come from the whole log,
with blocks that do not depend on the rows asked for, so a row's value is the same whatever shard it is
scored in; a shard skips a slice it has no rows of. Each shard still searches the neighbours of every
validation point among all rows of a slice: that search is shared by the rows, not done per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from pipeline.importance.registry import Context, register

NAME = "knn_shapley"
TEXT_FEATURES = ("concat", "product", "both")
PROJECTION_CHUNK_ROWS = 65536  # rows projected at a time: bounds the temporaries; fixed, so results do not vary


@dataclass(frozen=True)
class Knobs:
    k: int
    neighbours: int
    projection_dim: int
    text_features: str
    position_weight: float
    max_validation: int
    max_pairs_per_block: int
    scale_by_size: bool


def read_knobs(cfg: dict) -> Knobs:
    knobs = Knobs(k=int(cfg["k"]), neighbours=int(cfg["neighbours"]), projection_dim=int(cfg["projection_dim"]),
                  text_features=str(cfg["text_features"]), position_weight=float(cfg["position_weight"]),
                  max_validation=int(cfg["max_validation"]), max_pairs_per_block=int(cfg["max_pairs_per_block"]),
                  scale_by_size=bool(cfg["scale_by_size"]))
    minimum = {"k": 1, "neighbours": 0, "projection_dim": 0, "max_validation": 0, "max_pairs_per_block": 1}
    for key, least in minimum.items():
        if getattr(knobs, key) < least:
            raise _knob_error(key, f"must be at least {least}, got {getattr(knobs, key)}")
    if knobs.text_features not in TEXT_FEATURES:
        raise _knob_error("text_features", f"must be one of {TEXT_FEATURES}, got {knobs.text_features!r}")
    if not np.isfinite(knobs.position_weight) or knobs.position_weight < 0:
        raise _knob_error("position_weight", f"must be finite and non-negative, got {knobs.position_weight}")
    return knobs


def _knob_error(key: str, message: str) -> ValueError:
    return ValueError(f"importance.estimators.{NAME}.{key} {message}")


# Values from the nearest points of each validation point.

def mean_inverse_rank(first: int, last: int) -> float:
    """Mean of 1/i over the ranks i = first..last: (H_last - H_{first-1}) / (last - first + 1)."""
    if last < first:
        return 0.0
    harmonic = torch.special.digamma(torch.tensor([last + 1, first], dtype=torch.float64))  # H_n - gamma
    return float(harmonic[0] - harmonic[1]) / (last - first + 1)


def shapley_of_nearest(match: torch.Tensor, k: int, n_points: int, tail_match_rate: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The truncated recursion for a block (module docstring). match[v, r] = 1 when the r-th nearest point's
    label equals validation point v's, for the M nearest; tail_match_rate[v] = p, the share of matching
    labels past rank M (0 when M = N). Returns the values of the M nearest in the same order (block, M),
    and each validation point's estimate for a point past rank M whose label matches, and for one whose
    label does not (block,), float64."""
    match = match.to(torch.float64)
    m = match.shape[1]
    p = tail_match_rate.to(torch.float64)
    last = match[:, -1] / m - p * (1.0 / m - 1.0 / n_points)
    rank = torch.arange(1, m, device=match.device, dtype=torch.float64)  # i = 1..M-1
    coef = torch.clamp(rank, max=float(k)) / (rank * k)
    step = (match[:, :-1] - match[:, 1:]) * coef  # s_i - s_{i+1}
    # s_i = s_M + sum_{j >= i} step_j: a reversed cumulative sum.
    above = torch.flip(torch.cumsum(torch.flip(step, dims=[1]), dim=1), dims=[1])
    values = torch.cat([above + last[:, None], last[:, None]], dim=1)
    c = mean_inverse_rank(m + 1, n_points)
    return values, (1 - p) * c + p / n_points, -p * c + p / n_points


def nearest(distance: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m nearest points of each row, nearest first. All of them: a stable sort, so ties are
    broken by index; fewer: torch.topk, which never sorts the rest."""
    if m >= distance.shape[1]:
        return torch.sort(distance, dim=1, stable=True).indices
    return torch.topk(distance, m, dim=1, largest=False, sorted=True).indices


def _partial_distance(val_points: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
    """|x|^2 - 2 v.x for each pair: the squared distance less |v|^2, which is the same along a row and does
    not change the order. One product, [-2 v, 1] . [x, |x|^2], so no separate pass adds the norms."""
    return torch.cat([-2.0 * val_points, torch.ones_like(val_points[:, :1])], dim=1) @ augmented.T


def neighbour_blocks(points: torch.Tensor, groups: torch.Tensor, val_points: torch.Tensor, val_groups: torch.Tensor,
                     m: int, group_distance: float, max_pairs_per_block: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(validation rows, their m nearest points nearest first) in blocks. The squared distance of two points
    is that of their vectors plus `group_distance` when their groups differ. When a validation point's m-th
    nearest in its own group is nearer than `group_distance`, no point of another group can be among its m
    nearest: those are searched in the group alone. The others are searched among all points."""
    augmented = torch.cat([points, (points * points).sum(dim=1, keepdim=True)], dim=1)
    rest = [torch.arange(len(val_points), device=points.device)]
    if 0 < m < len(points) and group_distance > 0:
        val_norm = (val_points * val_points).sum(dim=1)
        # Far above the rounding of the expanded distance, so a point left out is really further away.
        slack = 1e-4 * (1 + float(augmented[:, -1].max()) + val_norm)
        rest = []
        for group in torch.unique(val_groups):
            members, rows = torch.nonzero(groups == group).flatten(), torch.nonzero(val_groups == group).flatten()
            if len(members) < m:
                rest.append(rows)
                continue
            block = max(1, int(max_pairs_per_block) // len(members))
            for start in range(0, len(rows), block):
                at = rows[start:start + block]
                top = torch.topk(_partial_distance(val_points[at], augmented[members]), m, dim=1, largest=False)
                inside = top.values[:, -1] + val_norm[at] < group_distance - slack[at]
                yield at[inside], members[top.indices[inside]]
                rest.append(at[~inside])
    rest = torch.cat(rest)
    block = max(1, int(max_pairs_per_block) // len(points))
    for start in range(0, len(rest), block):
        at = rest[start:start + block]
        distance = _partial_distance(val_points[at], augmented)
        if group_distance > 0:
            distance += group_distance * (groups[None, :] != val_groups[at, None])
        yield at, nearest(distance, m)


def knn_shapley(points: torch.Tensor, labels: torch.Tensor, val_points: torch.Tensor, val_labels: torch.Tensor,
                k: int, max_pairs_per_block: int, neighbours: int = 0, groups: torch.Tensor | None = None,
                val_groups: torch.Tensor | None = None, group_distance: float = 0.0) -> torch.Tensor:
    """Mean KNN-Shapley value of each of `points` over the validation points, float64, on points' device.
    `neighbours` = M: the exact treatment covers the max(K, M) nearest of each validation point, the rest
    is estimated within 1/M (module docstring); 0 = all (exact). `groups` (one integer per point, e.g. the
    position) with `group_distance` add that squared distance between points of different groups, as a
    one-hot of the group scaled by sqrt(group_distance / 2) would, without building the one-hot."""
    n = len(points)
    if n == 0 or len(val_points) == 0:
        raise ValueError("knn_shapley: need at least one point to value and one validation point")
    if k < 1:
        raise ValueError(f"knn_shapley: K must be at least 1, got {k}")
    if groups is None or val_groups is None:
        groups = torch.zeros(n, dtype=torch.long, device=points.device)
        val_groups, group_distance = torch.zeros(len(val_points), dtype=torch.long, device=points.device), 0.0
    m = n if neighbours <= 0 else min(n, max(k, neighbours))
    classes, code = torch.unique(torch.cat([labels, val_labels]), return_inverse=True)
    point_class, val_class = code[:n], code[n:]
    class_size = torch.bincount(point_class, minlength=len(classes)).to(torch.float64)
    total = torch.zeros(n, dtype=torch.float64, device=points.device)
    # Past rank M a point gets its validation point's estimate for a matching or a non-matching label: every
    # point is given the non-matching one plus the difference for its class, and the M nearest are
    # corrected to their recursion values.
    tail_base = torch.zeros((), dtype=torch.float64, device=points.device)
    tail_by_class = torch.zeros(len(classes), dtype=torch.float64, device=points.device)
    for at, order in neighbour_blocks(points, groups, val_points, val_groups, m, group_distance,
                                      max_pairs_per_block):
        if len(at) == 0:
            continue
        y = val_class[at]
        match = point_class[order] == y[:, None]
        tail_rate = (class_size[y] - match.sum(dim=1)) / (n - m) if m < n else torch.zeros_like(class_size[y])
        values, if_match, if_not = shapley_of_nearest(match, k, n, tail_rate)
        past_m = torch.where(match, if_match[:, None], if_not[:, None])
        total.index_add_(0, order.reshape(-1), (values - past_m).reshape(-1))
        tail_base += if_not.sum()
        tail_by_class.index_add_(0, y, if_match - if_not)
    total += tail_base + tail_by_class[point_class]
    return total / len(val_points)


# Features.

def _gaussian(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, cols, generator=generator, dtype=torch.float32) / float(np.sqrt(cols))


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + PROJECTION_CHUNK_ROWS, n)) for start in range(0, n, PROJECTION_CHUNK_ROWS)]


def embed_text(ctx: Context, knobs: Knobs, rows: np.ndarray) -> torch.Tensor:
    """Text vector of `rows` of the log (projected to `projection_dim` when set), float32 on ctx.device,
    built in chunks of rows so no temporary holds more than a chunk."""
    x, device, r = ctx.data.x, ctx.device, knobs.projection_dim
    rows = torch.as_tensor(np.ascontiguousarray(rows))
    concat, product = knobs.text_features in ("concat", "both"), knobs.text_features in ("product", "both")
    if r == 0:
        part = x.subset(rows)
        vectors = [part.query.float(), part.title.float()] if concat else []
        vectors += [part.query.float() * part.title.float()] if product else []
        return torch.cat(vectors, dim=1).to(device)
    generator = torch.Generator().manual_seed(int(ctx.seed))
    query_matrix, title_matrix, product_matrix = (_gaussian(x.text_dim, r, generator).to(device) for _ in range(3))
    gather = concat and x.texts is not None
    if gather:
        # Rows that hold text indices gather projected texts instead: the same linear map, with one product
        # per unique text rather than per row.
        texts = x.texts.to(device).float()
        projected_queries, projected_titles = texts @ query_matrix, texts @ title_matrix
    out = torch.zeros(len(rows), r, device=device)
    for chunk in _chunks(len(rows)):
        part = x.subset(rows[chunk])
        if gather:
            out[chunk] += (part.with_texts(projected_queries).query.to(device)
                           + part.with_texts(projected_titles).title.to(device))
        elif concat:
            out[chunk] += part.query.to(device).float() @ query_matrix + part.title.to(device).float() @ title_matrix
        if product:
            out[chunk] += (part.query.to(device).float() * part.title.to(device).float()) @ product_matrix
    return out


def _validation(index: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    if cap > 0 and len(index) > cap:
        return np.sort(rng.choice(index, cap, replace=False))
    return index


@register(NAME, cost_class="forward-only", shardable=True,
          low_reason="nearest neighbours' labels disagree", high_reason="nearest neighbours' labels agree")
def score(ctx: Context) -> pd.DataFrame:
    knobs = read_knobs(ctx.params["importance"]["estimators"][NAME])
    day = ctx.data
    train, holdout = day.train_index, day.holdout_index
    if len(train) == 0 or len(holdout) == 0:
        raise ValueError(f"knn_shapley: needs both a training slice ({len(train)} rows) and a holdout slice "
                         f"({len(holdout)} rows), each valued against the other")
    if day.x.click.numpy()[train].sum() == 0:
        raise ValueError("knn_shapley: the training slice has no clicks")
    rng = np.random.default_rng(ctx.seed)
    # Both samples are drawn whichever slices this call scores, so every shard sees the same ones.
    slices = [(train, _validation(holdout, knobs.max_validation, rng)),
              (holdout, _validation(train, knobs.max_validation, rng))]
    wanted = np.zeros(len(day.impressions), dtype=bool)
    wanted[ctx.rows_to_score()] = True
    labels = day.x.click.to(ctx.device)
    position = day.x.position.clamp(0, int(ctx.params["ranker"]["max_position"])).to(ctx.device)
    values = np.zeros(len(day.impressions), dtype=np.float64)
    for valued, val in slices:
        if not wanted[valued].any():
            continue
        at, val_at = torch.as_tensor(valued, device=ctx.device), torch.as_tensor(val, device=ctx.device)
        v = knn_shapley(embed_text(ctx, knobs, valued), labels[at], embed_text(ctx, knobs, val), labels[val_at],
                        knobs.k, knobs.max_pairs_per_block, knobs.neighbours, position[at], position[val_at],
                        2.0 * knobs.position_weight ** 2)
        values[valued] = v.cpu().numpy() * (len(valued) if knobs.scale_by_size else 1.0)
    return ctx.select(values, {"knn_shapley_value": values})
