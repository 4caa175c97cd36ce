"""Click-model likelihood: a position-based click model (PBM) fitted by EM on the training slice; an
impression is trustworthy when its session's clicks are likely under that model.

PBM: P(click) = examination(position) * attractiveness(context, item), the context being the query
for searches and the surface for recommendations. A bot clicking uniformly at random, whatever the
position or the item, produces clicks the model finds unlikely, so its whole session scores low.

Score per impression = mean log-likelihood of its session's impressions + own_term_weight * its own.
The array functions (`fit_pbm`, `click_probability`, `impression_log_likelihood`,
`session_log_likelihood`) work on plain numpy arrays; `fit_context` fits on an estimator Context.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.importance.registry import Context, register


@dataclass(frozen=True)
class PBM:
    examination: np.ndarray      # (max_position + 1,) P(examine | position); index 0 unused
    attractiveness: np.ndarray   # (n_pairs,) per (context, item) code
    item_attractiveness: np.ndarray  # (n_items,) the prior of each pair, backed off to the item
    global_attractiveness: float
    log_likelihood: float        # mean per impression on the fitted rows, at the last iteration
    iterations: int


def _codes(values) -> np.ndarray:
    """Integer codes as given (int32 codes stay int32: half the memory on a large log), else int64."""
    values = np.asarray(values)
    return values if values.dtype.kind in "iu" else values.astype(np.int64)


def _check_arrays(position, pair, item, click, n_pairs: int, n_items: int, max_position: int):
    position, pair, item = (_codes(a) for a in (position, pair, item))
    click = np.asarray(click, dtype=np.float64)
    n = len(click)
    if not (len(position) == len(pair) == len(item) == n):
        raise ValueError(f"fit_pbm: arrays differ in length ({len(position)}, {len(pair)}, {len(item)}, {n})")
    if n == 0:
        raise ValueError("fit_pbm: no impressions to fit")
    if not np.isin(click, (0.0, 1.0)).all():
        raise ValueError("fit_pbm: clicks must be 0 or 1")
    if click.sum() == 0:
        raise ValueError("fit_pbm: the log has no clicks; a click model cannot be fitted")
    if position.min() < 1 or position.max() > max_position:
        raise ValueError(f"fit_pbm: positions must lie in [1, {max_position}], got "
                         f"[{position.min()}, {position.max()}]")
    if pair.min() < 0 or pair.max() >= n_pairs or item.min() < 0 or item.max() >= n_items:
        raise ValueError("fit_pbm: pair or item code out of range")
    return position, pair, item, click


def fit_pbm(position, pair, item, click, *, n_pairs: int, n_items: int, max_position: int,
            iterations: int, tol: float, item_prior_strength: float, pair_prior_strength: float,
            anchor_top: bool = True, eps: float = 1e-4) -> PBM:
    """EM for the position-based click model.

    `position` is 1-based; `pair` codes (context, item) and `item` codes the item, both in
    [0, n_pairs) and [0, n_items); codes with no rows here keep their prior, so rows scored later
    (unseen pairs or items) back off to the item's and then the global attractiveness.
    Attractiveness is smoothed hierarchically: a pair shrinks toward its item (pseudo-count
    pair_prior_strength), an item toward the global mean (item_prior_strength).
    With anchor_top, examination is rescaled so the top observed position has 1: the product is
    all the data identifies, and relative propensities are what position debiasing needs.
    """
    position, pair, item, click = _check_arrays(position, pair, item, click, n_pairs, n_items, max_position)
    size = max_position + 1
    pair_item = np.zeros(n_pairs, dtype=np.int64)
    pair_item[pair] = item  # a pair code names one item
    n_at = np.bincount(position, minlength=size).astype(np.float64)
    n_item = np.bincount(item, minlength=n_items).astype(np.float64)
    n_pair = np.bincount(pair, minlength=n_pairs).astype(np.float64)
    seen = n_at > 0
    top = int(np.flatnonzero(seen)[0])

    # Start from the click-rate shape by position and a flat attractiveness.
    ctr_at = np.bincount(position, weights=click, minlength=size) / np.maximum(n_at, 1)
    theta = np.clip(np.where(seen, ctr_at / max(ctr_at[top], eps), 0.5), eps, 1.0)
    alpha_global = float(np.clip(click.mean() / np.mean(theta[position]), eps, 1 - eps))
    alpha_item = np.full(n_items, alpha_global)
    alpha = np.full(n_pairs, alpha_global)
    previous, it, ll = -np.inf, 0, -np.inf
    clicked = click > 0
    # The per-row arrays below are computed in place where possible: on a 10M-row log each temporary
    # is 80 MB, and the naive expressions keep about a dozen of them alive at once.
    for it in range(1, int(iterations) + 1):
        t, a = theta[position], alpha[pair]
        p = np.multiply(t, a)
        np.clip(p, eps, 1 - eps, out=p)
        terms = np.log1p(-p)
        terms[clicked] = np.log(p[clicked])
        ll = float(np.mean(terms))
        del terms
        not_p = np.subtract(1.0, p)
        del p
        # E-step: posteriors of examined and attractive; a click means both.
        post_e = np.subtract(1.0, a)
        post_e *= t
        post_e /= not_p
        post_e[clicked] = 1.0
        post_a = np.subtract(1.0, t)
        post_a *= a
        post_a /= not_p
        post_a[clicked] = 1.0
        del t, a, not_p
        # M-step.
        theta = np.bincount(position, weights=post_e, minlength=size) / np.maximum(n_at, 1)
        alpha_global = float(np.clip(post_a.mean(), eps, 1 - eps))
        alpha_item = ((np.bincount(item, weights=post_a, minlength=n_items) + item_prior_strength * alpha_global)
                      / (n_item + item_prior_strength))
        alpha = ((np.bincount(pair, weights=post_a, minlength=n_pairs) + pair_prior_strength * alpha_item[pair_item])
                 / (n_pair + pair_prior_strength))
        if anchor_top:
            scale = max(theta[top], eps)
            theta, alpha, alpha_item = theta / scale, alpha * scale, alpha_item * scale
            alpha_global *= scale
        theta = _fill_unseen(np.clip(theta, eps, 1.0), seen)
        alpha = np.clip(alpha, eps, 1 - eps)
        alpha_item = np.clip(alpha_item, eps, 1 - eps)
        alpha_global = float(np.clip(alpha_global, eps, 1 - eps))
        if abs(ll - previous) < tol:
            break
        previous = ll
    return PBM(theta, alpha, alpha_item, alpha_global, ll, it)


def _fill_unseen(theta: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Positions with no rows take the nearest seen position above them (examination only falls)."""
    out = theta.copy()
    last = out[int(np.flatnonzero(seen)[0])]
    for p in range(1, len(out)):
        if seen[p]:
            last = out[p]
        else:
            out[p] = last
    return out


def click_probability(model: PBM, position, pair, eps: float = 1e-4) -> np.ndarray:
    """P(click) = examination(position) * attractiveness(pair), kept inside (eps, 1 - eps)."""
    p = model.examination[_codes(position)] * model.attractiveness[_codes(pair)]
    return np.clip(p, eps, 1 - eps)


def impression_log_likelihood(p_click, click) -> np.ndarray:
    p_click, click = np.asarray(p_click, dtype=np.float64), np.asarray(click, dtype=np.float64)
    return click * np.log(p_click) + (1 - click) * np.log1p(-p_click)


def session_log_likelihood(p_click, click, session) -> np.ndarray:
    """Per row: the mean log-likelihood of the clicks of the row's session (session = integer codes)."""
    session = _codes(session)
    ll = impression_log_likelihood(p_click, click)
    total = np.bincount(session, weights=ll)
    count = np.bincount(session)
    return (total / np.maximum(count, 1))[session]


@dataclass(frozen=True)
class Coded:
    """The log as integer codes for the PBM: position (clipped), (context, item) pair, item, session."""
    position: np.ndarray
    pair: np.ndarray
    item: np.ndarray
    session: np.ndarray
    click: np.ndarray
    n_pairs: int
    n_items: int


def encode(impressions: pd.DataFrame, max_position: int) -> Coded:
    # Searches are keyed by query, recommendations by surface: a recommendation's context is the list.
    context = impressions["query"].where(impressions["surface"] == "search", "\x00" + impressions["surface"])
    item, item_values = pd.factorize(impressions["item_id"], sort=True)
    context_code, _ = pd.factorize(context.fillna("\x00"), sort=True)
    # Integer pair keys in (context, item) order: the codes of a sorted groupby over the two strings,
    # without hashing string pairs for every row.
    pair, _ = pd.factorize(context_code.astype(np.int64) * max(len(item_values), 1) + item, sort=True)
    pair = pair.astype(np.int32)
    session, _ = pd.factorize(impressions["session_id"], sort=True)
    return Coded(
        position=impressions["position"].to_numpy(dtype=np.int64).clip(1, max_position).astype(np.int32),
        pair=pair, item=item.astype(np.int32), session=session.astype(np.int32),
        click=impressions["clicked"].to_numpy(dtype=np.float64),
        n_pairs=int(pair.max()) + 1 if len(pair) else 0, n_items=len(item_values),
    )


def fit_context(ctx: Context) -> tuple[PBM, Coded]:
    """The PBM fitted on ctx's training slice, with the codes of every row."""
    cfg = ctx.params["importance"]["estimators"]["click_model"]
    day = ctx.data
    train = day.train_index
    if len(train) == 0:
        raise ValueError("click_model: the training slice is empty")
    coded = encode(day.impressions, int(ctx.params["ranker"]["max_position"]))
    if coded.click[train].sum() == 0:
        raise ValueError("click_model: the training slice has no clicks; a click model cannot be fitted")
    model = fit_pbm(coded.position[train], coded.pair[train], coded.item[train], coded.click[train],
                    n_pairs=coded.n_pairs, n_items=coded.n_items,
                    max_position=int(ctx.params["ranker"]["max_position"]),
                    iterations=int(cfg["iterations"]), tol=float(cfg["tol"]),
                    item_prior_strength=float(cfg["item_prior_strength"]),
                    pair_prior_strength=float(cfg["pair_prior_strength"]),
                    anchor_top=bool(cfg["anchor_top"]), eps=float(cfg["eps"]))
    return model, coded


def quality_scores(ctx: Context) -> tuple[np.ndarray, PBM, Coded]:
    """The click-model score of every row, with the fitted model and codes (reused by position_ipw)."""
    cfg = ctx.params["importance"]["estimators"]["click_model"]
    model, coded = fit_context(ctx)
    p = click_probability(model, coded.position, coded.pair, float(cfg["eps"]))
    score = (session_log_likelihood(p, coded.click, coded.session)
             + float(cfg["own_term_weight"]) * impression_log_likelihood(p, coded.click))
    return score, model, coded


@register("click_model", cost_class="forward-only", shardable=True,
          low_reason="unlikely under the click model", high_reason="likely under the click model")
def score(ctx: Context) -> pd.DataFrame:
    values, _, _ = quality_scores(ctx)
    return ctx.select(values, {"click_model_log_likelihood": values})
