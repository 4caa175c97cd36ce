"""The simulated world every day shares: the catalog plus the users (category preferences, a preferred
price level, how active each is, when each signed up), which come from the root seed alone, and the
models of how users meet a ranked list: the true relevance of an item to a request, the logging
ranker's Plackett-Luce order and its propensities, and the position-based examination and click model
with purchases. Only the user draw seeds a stream of its own; the rest take the day's generator or
its uniforms from the day's module, which so fixes the order of every draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.simulate.catalog import CATEGORIES, Catalog, build_catalog, ids
from pipeline.params import stage_seed


@dataclass
class World(Catalog):
    """The catalog and the users: fixed by the root seed, shared by every day."""
    user_ids: np.ndarray      # object array of str
    user_pref: np.ndarray     # (users, categories), rows sum to 1
    user_pref_cdf: np.ndarray
    user_price_z: np.ndarray  # preferred log-price offset from the category median
    user_activity: np.ndarray # probability a session belongs to the user
    user_signup_days_ago: np.ndarray  # as of params users_as_of


def build_world(params: dict) -> World:
    """The catalog and the users, derived from the root seed only."""
    items = build_catalog(params)
    sim = params["simulate"]
    n_users, n_cat = int(sim["n_users"]), len(CATEGORIES)
    urng = np.random.default_rng(stage_seed(params, "simulate:users"))
    pref = urng.dirichlet(np.full(n_cat, float(sim["user_pref_concentration"])), size=n_users)
    price_z = urng.normal(0.0, float(sim["user_price_sigma"]), n_users)
    activity = urng.lognormal(0.0, float(sim["user_activity_sigma"]), n_users)
    signup = urng.exponential(float(sim["user_tenure_mean_days"]), n_users).astype(np.int64)
    cdf = np.cumsum(pref, axis=1)
    cdf[:, -1] = 1.0
    return World(
        **vars(items),
        user_ids=ids("u", n_users, max(6, len(str(n_users - 1)))),
        user_pref=pref, user_pref_cdf=cdf, user_price_z=price_z, user_activity=activity / activity.sum(),
        user_signup_days_ago=signup,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def relevance(world: World, sim: dict, cand: np.ndarray, req_user: np.ndarray, shown_price: np.ndarray,
              s_idx: np.ndarray, target: np.ndarray, target_cat: np.ndarray,
              named_attrs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """True relevance in [0, 1] of each candidate to its request: a weighted mean of components that each
    lie in [0, 1]. Search requests (rows `s_idx`, looking for `target`) match on product type, category
    and the attributes (brand, colour, material) their query names; recommendations on category liking.
    """
    q_brand, q_colour, q_material = named_attrs
    c_cat = world.cat[cand]
    pref_max = world.user_pref.max(1)
    pref = world.user_pref[req_user[:, None], c_cat] / pref_max[req_user][:, None]
    price_gap = (np.log(shown_price[cand]) - np.log(world.median_price[c_cat])
                 - world.user_price_z[req_user][:, None]) / float(sim["price_fit_width"])
    price_fit = np.exp(-0.5 * price_gap ** 2)
    match = pref.copy()  # recommendations: how much the user likes the item's category
    qw = sim["query_match_weights"]
    w_pt, w_cat, w_attr = (float(qw[k]) for k in ("product_type", "category", "attributes"))
    sc = cand[s_idx]
    pt_hit = (world.ptype[sc] == world.ptype[target][:, None]).astype(float)
    cat_hit = (world.cat[sc] == target_cat[:, None]).astype(float)
    named = q_brand.astype(np.int64) + q_colour + q_material
    attr_hits = ((q_brand[:, None] & (world.brand[sc] == world.brand[target][:, None])).astype(np.int64)
                 + (q_colour[:, None] & (world.colour[sc] == world.colour[target][:, None]))
                 + (q_material[:, None] & (world.material[sc] == world.material[target][:, None])))
    attr = np.where(named[:, None] > 0, attr_hits / np.maximum(named, 1)[:, None], pt_hit)
    match[s_idx] = (w_pt * pt_hit + w_cat * cat_hit + w_attr * attr) / (w_pt + w_cat + w_attr)
    rw = sim["relevance_weights"]
    comps = {"match": match, "preference": pref, "price": price_fit, "quality": world.quality[cand]}
    w_total = sum(float(rw[k]) for k in comps)
    return np.clip(sum(float(rw[k]) * v for k, v in comps.items()) / w_total, 0.0, 1.0)


def plackett_luce(rng: np.random.Generator, util: np.ndarray, valid: np.ndarray, beta: float,
                   top: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank each row by Plackett-Luce with weights exp(util / beta), via Gumbel-perturbed utilities.

    Returns the column indices of the first `top` places per row, and for each place the probability
    of drawing that item given the items placed above it. Invalid entries are never placed.
    """
    perturbed = np.where(valid, util + beta * rng.gumbel(size=util.shape), -np.inf)
    rank = np.argsort(-perturbed, axis=1, kind="stable")
    r_util = np.where(np.take_along_axis(valid, rank, 1), np.take_along_axis(util, rank, 1) / beta, -np.inf)
    log_rest = np.logaddexp.accumulate(r_util[:, ::-1], axis=1)[:, ::-1]  # log-sum over items not yet placed
    with np.errstate(invalid="ignore"):  # -inf - -inf past the valid entries; never shown
        prop = np.exp(r_util[:, :top] - log_rest[:, :top])
    return rank[:, :top], np.clip(np.nan_to_num(prop), np.finfo(float).tiny, 1.0)


def user_response(u: np.ndarray, sim: dict, position: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What users really did with each shown row, before any logging noise: position-based examination,
    a click when the examined item attracts, a purchase after some clicks. `u`: three rows of uniforms."""
    examined = u[0] < position.astype(float) ** -float(sim["examination_decay"])
    attractive = u[1] < _sigmoid(float(sim["attractiveness_slope"]) * rel + float(sim["attractiveness_bias"]))
    real_click = examined & attractive
    real_buy = real_click & (u[2] < _sigmoid(float(sim["purchase_slope"]) * rel + float(sim["purchase_bias"])))
    return real_click, real_buy
