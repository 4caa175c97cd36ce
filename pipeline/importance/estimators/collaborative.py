"""Collaborative agreement: does an impression's click agree with what other users' co-clicks say?

From the training slice's clicks, a sparse user x key click-count matrix R (key = item, and, as a
coarser level for sparse logs, the item's catalog category) and the key x key co-click counts
C = B^T B over the binarised B. For an impression (u, i) the agreement is the mean similarity between
i and u's other clicks (this impression itself excluded), where the similarity of two different keys
is their cosine over users with u left out (u's own co-clicks would otherwise vouch for themselves)
and a key is similar 1 to itself:

    a(u, i) = (sum_j R'_uj sim_-u(i, j) + beta * f(u, i)) / (m + beta),  m = sum_j R'_uj,

with R' = u's clicks less this impression's. The fallback f, which also carries users with no other
click, is the item's popularity-adjusted click rate among other users (shrunk toward the global rate
by its number of impressions, relative to that rate, capped) times the mean agreement of the training
clicks that have other clicks beside them: a neutral agreement, raised or lowered by the item's appeal.
A click scores a, a non-click 1 - a; the levels are averaged with weights from params. A bot
clicking random unrelated items gets low agreement. Users x users is never formed; products are
taken over user blocks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from pipeline.importance.registry import Context, register


def _cosine_parts(user, key, n_users: int, n_keys: int):
    """R (counts), co-click counts C with a zero diagonal, and users per key n."""
    ones = np.ones(len(user), dtype=np.float64)
    counts = sparse.csr_matrix((ones, (user, key)), shape=(n_users, n_keys))
    counts.sum_duplicates()
    binary = counts.copy()
    binary.data[:] = 1.0
    co = (binary.T @ binary).tocsr()
    co.setdiag(0.0)
    co.eliminate_zeros()
    n = np.asarray(binary.sum(axis=0)).ravel()
    return counts, co, n


def click_agreement(click_user, click_key, user, key, own_click, fallback, *, n_users: int, n_keys: int,
                    beta: float, user_batch: int) -> np.ndarray:
    """Agreement a(u, i) in [0, 1] for each row (user[r], key[r]) against the clicks (click_user, click_key).

    `own_click[r]` is True when row r is itself one of the clicks (it is then left out of u's clicks);
    `fallback[r]` in [0, 1] is the prior agreement, weighted as `beta` pseudo-clicks.
    """
    agreement, m = similarity_sums(click_user, click_key, user, key, own_click, n_users=n_users,
                                   n_keys=n_keys, user_batch=user_batch)
    # In place: each row-sized temporary is 80 MB on a 10M-row log.
    agreement += beta * np.asarray(fallback, dtype=np.float64)
    m += beta
    agreement /= m
    return np.clip(agreement, 0.0, 1.0, out=agreement)


def similarity_sums(click_user, click_key, user, key, own_click, *, n_users: int, n_keys: int,
                    user_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the sum of similarities between key[r] and user[r]'s other clicks, and how many those are."""
    user, key = np.asarray(user, dtype=np.int64), np.asarray(key, dtype=np.int64)
    own_click = np.asarray(own_click)
    counts, co, n = _cosine_parts(np.asarray(click_user, dtype=np.int64), np.asarray(click_key, dtype=np.int64),
                                  n_users, n_keys)
    # w_uj = R_uj / sqrt(n_j - 1): cosine weights of u's clicks with u left out of j's users.
    w = counts.copy()
    others = np.sqrt(np.maximum(n - 1.0, 0.0))
    w.data = w.data / np.where(others > 0, others, np.inf)[w.indices]
    w_total = np.asarray(w.sum(axis=1)).ravel()
    clicks_of = np.asarray(counts.sum(axis=1)).ravel()
    similarity_sum = np.empty(len(user), dtype=np.float64)
    clicks_beside = np.empty(len(user), dtype=np.float64)
    order = np.argsort(user, kind="stable")
    bounds = np.searchsorted(user[order], np.arange(0, n_users + user_batch, user_batch))
    # Everything per row is worked out one block of users at a time: on a 10M-row log a whole-log
    # temporary costs 80 MB, and the formula needs about ten of them.
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == hi:
            continue
        rows = order[lo:hi]
        u, k = user[rows], key[rows]
        own = own_click[rows].astype(np.float64)
        block_users, local = np.unique(u, return_inverse=True)
        same = np.asarray(counts[u, k]).ravel()  # u's clicks on this very key
        b_ui = (same > 0).astype(np.float64)
        # (W C)[u, i] = sum over u's other keys j of w_uj C_ij, for this block of users only.
        cross = np.asarray((w[block_users] @ co).tocsr()[local, k]).ravel()
        # Leave u out of C_ij (u co-clicked i and j) and of n_i.
        numerator = cross - b_ui * (w_total[u] - np.asarray(w[u, k]).ravel())
        n_i_others = n[k] - b_ui
        with np.errstate(divide="ignore", invalid="ignore"):
            cross_sim = np.where(n_i_others > 0, numerator / np.sqrt(np.maximum(n_i_others, 1.0)), 0.0)
        similarity_sum[rows] = np.maximum(cross_sim, 0.0) + (same - own)
        clicks_beside[rows] = clicks_of[u] - own
    return similarity_sum, clicks_beside


def popularity_rate(item, click, train: np.ndarray, user, prior_strength: float) -> np.ndarray:
    """Per row: the item's click rate among other users' training impressions, shrunk toward the
    global rate by prior_strength pseudo-impressions, divided by the global rate."""
    item, user = np.asarray(item, dtype=np.int64), np.asarray(user, dtype=np.int64)
    t_click = np.where(train, np.asarray(click, dtype=np.float64), 0.0)
    t_seen = train.astype(np.float64)
    global_rate = t_click.sum() / max(t_seen.sum(), 1.0)
    n_items = int(item.max()) + 1
    # (user, item) pair codes in order of first appearance, from one integer key per row.
    pair, _ = pd.factorize(user * n_items + item)
    # Row-sized arrays are built in place, one at a time: a 10M-row log makes each of them 80 MB.
    numerator = np.bincount(item, weights=t_click, minlength=n_items)[item]
    numerator -= np.bincount(pair, weights=t_click)[pair]
    del t_click
    numerator += prior_strength * global_rate
    seen = np.bincount(item, weights=t_seen, minlength=n_items)[item]
    seen -= np.bincount(pair, weights=t_seen)[pair]
    del t_seen, pair
    seen += prior_strength
    rate = np.divide(numerator, seen, out=numerator, where=seen > 0)
    rate[~(seen > 0)] = global_rate
    return rate / max(global_rate, 1e-12)


@register("collaborative", cost_class="forward-only", shardable=True,
          low_reason="the user's other clicks disagree", high_reason="the user's other clicks agree")
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["collaborative"]
    day = ctx.data
    imp = day.impressions
    train = ~day.holdout
    click = imp["clicked"].to_numpy(dtype=np.int64)
    if not train.any():
        raise ValueError("collaborative: the training slice is empty")
    if click[train].sum() == 0:
        raise ValueError("collaborative: the training slice has no clicks; there is nothing to agree with")
    entity = str(cfg["user_column"])
    if entity not in imp:
        raise ValueError(f"collaborative: user_column {entity!r} is not a column of the log")
    user, users = pd.factorize(imp[entity], sort=True)
    item, item_ids = pd.factorize(imp["item_id"], sort=True)
    beta = float(cfg["fallback_strength"])
    popularity = np.minimum(popularity_rate(item, click, train, user, float(cfg["rate_prior_strength"])),
                            float(cfg["max_popularity_ratio"]))
    clicked_train = train & (click == 1)
    levels = _levels(item_ids, day.catalog, item, cfg)
    total_weight = sum(w for _, w in levels)
    agreement = np.zeros(len(imp), dtype=np.float64)
    for key, weight in levels:
        n_keys = int(key.max()) + 1
        kwargs = dict(n_users=len(users), n_keys=n_keys, user_batch=int(cfg["user_batch"]))
        # Neutral prior: the mean agreement of the training clicks that have other clicks beside them.
        ones = np.ones(int(clicked_train.sum()))
        sums, m = similarity_sums(user[clicked_train], key[clicked_train], user[clicked_train], key[clicked_train],
                                  ones, **kwargs)
        neutral = float(np.mean(sums[m > 0] / m[m > 0])) if (m > 0).any() else 0.5
        fallback = np.clip(neutral * popularity, 0.0, 1.0)
        a = click_agreement(user[clicked_train], key[clicked_train], user, key, clicked_train, fallback,
                            beta=beta, **kwargs)
        a *= weight / total_weight
        agreement += a
        del a
    # A non-click scores 1 - a; in place, like the rest of the row-sized arrays.
    not_clicked = click != 1
    np.subtract(1.0, agreement, out=agreement, where=not_clicked)
    return ctx.select(agreement, {"agreement": agreement})


def _levels(item_ids: pd.Index, catalog: pd.DataFrame, item: np.ndarray, cfg: dict) -> list[tuple[np.ndarray, float]]:
    """(key codes, weight) per level: the item, and the catalog category (an item without one is its own key).
    Keys are worked out per item (`item_ids`, in code order) and gathered per row: no string per row."""
    levels = [(item.astype(np.int64), float(cfg["item_weight"]))]
    weight = float(cfg["category_weight"])
    if weight > 0 and "category" in catalog and catalog["category"].notna().any():
        items = pd.Series(item_ids, dtype=object)
        category = items.map(catalog.drop_duplicates("item_id").set_index("item_id")["category"])
        key = category.where(category.notna(), "\x00item:" + items.astype(str))
        codes, _ = pd.factorize(key, sort=True)
        levels.append((codes.astype(np.int64)[item], weight))
    if sum(w for _, w in levels) <= 0:
        raise ValueError("collaborative: item_weight and category_weight must not both be 0")
    return levels
