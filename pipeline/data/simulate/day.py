"""One simulated day from its own random stream (seeded by the day alone, so a day's files never depend
on which other days were simulated): sessions spread over the day by a diurnal curve, their search
and recommendation requests, candidates and queries per request, the day's discounts, the logging
ranker's lists, the users' clicks and purchases, then the logging noise (bot sessions, accidental and
missed clicks). Returns the impressions table and the truth table that records each row's noise and
relevance.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.data.contract import IMPRESSION_SCHEMA, TRUTH_SCHEMA
from pipeline.data.simulate.catalog import CATEGORIES, ids
from pipeline.data.simulate.queries import make_queries
from pipeline.data.simulate.world import World, plackett_luce, relevance, user_response
from pipeline.params import stage_seed

DEVICES = ("mobile", "desktop", "tablet")
NOISE_KINDS = ("none", "bot_session", "accidental_click", "missed_click")
SIM_IMPRESSION_SCHEMA = pa.schema(
    list(IMPRESSION_SCHEMA) + [pa.field("f_device", pa.string()), pa.field("f_user_tenure_days", pa.int64())]
)
DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class _Groups:
    """Items grouped by a code (category, product type), to draw a uniform member of a group fast."""
    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray, n_groups: int) -> "_Groups":
        order = np.argsort(codes, kind="stable")
        count = np.bincount(codes, minlength=n_groups)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(order, start, count)

    def draw(self, u: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """A uniform member of each group: `u` in [0, 1) has one more axis than `groups` or the same shape."""
        if u.ndim > groups.ndim:
            groups = groups[..., None]
        offset = np.minimum((u * self.count[groups]).astype(np.int64), self.count[groups] - 1)
        return self.order[self.start[groups] + offset]


def _range(pair, name: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in pair)
    if not 1 <= lo <= hi:
        raise ValueError(f"simulate.{name}: expected 1 <= low <= high, got {pair}")
    return lo, hi


def _as_date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def inject_noise(u: np.ndarray, sim: dict, real_click: np.ndarray, real_buy: np.ndarray,
                 bot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The logged clicks and purchases, and each row's noise kind (an index into NOISE_KINDS): a bot
    session clicks at random and never buys; elsewhere a click can be accidental or go unlogged.
    `u`: three rows of uniforms."""
    accidental = ~bot & ~real_click & (u[0] < float(sim["accidental_click_rate"]))
    missed = ~bot & real_click & (u[1] < float(sim["missed_click_rate"]))
    bot_click = bot & (u[2] < float(sim["bot_click_rate"]))
    clicked = np.where(bot, bot_click, (real_click & ~missed) | accidental)
    purchased = ~bot & real_buy & ~missed
    kind = np.zeros(len(bot), np.int64)
    kind[bot], kind[accidental], kind[missed] = 1, 2, 3
    return clicked, purchased, kind


def simulate_day(day: str, world: World, params: dict) -> tuple[pa.Table, pa.Table, dict]:
    """One day's impressions and truth tables, and a few counts."""
    sim = params["simulate"]
    rng = np.random.default_rng(stage_seed(params, f"simulate:{day}"))
    tag = day.replace("-", "")
    day_date = dt.date.fromisoformat(day)
    day_start_us = (day_date - dt.date(1970, 1, 1)).days * DAY_US
    target_rows = int(sim["impressions_per_day"])
    if target_rows < 1:
        raise ValueError(f"simulate.impressions_per_day must be positive, got {target_rows}")
    l_lo, l_hi = _range(sim["list_length"], "list_length")
    s_lo, s_hi = _range(sim["requests_per_session"], "requests_per_session")
    n_cand = int(sim["candidates_per_request"])
    if n_cand < l_hi:
        raise ValueError(f"simulate.candidates_per_request ({n_cand}) must be >= list_length max ({l_hi})")
    beta = float(sim["ranker_noise"])
    if beta <= 0:
        raise ValueError(f"simulate.ranker_noise must be positive, got {beta}")
    n_items, n_cat = len(world.item_ids), len(CATEGORIES)

    # Sessions and requests: enough sessions to reach the day's row target, cut at the first that does.
    max_sessions = -(-target_rows // (s_lo * l_lo)) + 1
    reqs = rng.integers(s_lo, s_hi + 1, max_sessions)
    lengths = rng.integers(l_lo, l_hi + 1, int(reqs.sum()))
    rows_by_session = np.add.reduceat(lengths, np.concatenate([[0], np.cumsum(reqs)[:-1]]))
    n_sessions = min(int(np.searchsorted(np.cumsum(rows_by_session), target_rows)) + 1, max_sessions)
    reqs = reqs[:n_sessions]
    n_req = int(reqs.sum())
    lengths = lengths[:n_req]

    amplitude = float(sim["diurnal_amplitude"])
    if not 0 <= amplitude < 1:
        raise ValueError(f"simulate.diurnal_amplitude must be in [0, 1), got {amplitude}")
    hours = np.arange(24)
    hour_w = 1.0 + amplitude * np.cos(
        2 * np.pi * (hours + 0.5 - float(sim["diurnal_peak_hour"])) / 24)
    hour = rng.choice(24, n_sessions, p=hour_w / hour_w.sum())
    start_us = ((hour + rng.random(n_sessions)) * 3600e6).astype(np.int64)
    session_user = rng.choice(len(world.user_ids), n_sessions, p=world.user_activity)
    dev_mix = sim["device_mix"]
    dev_p = np.array([float(dev_mix[d]) for d in DEVICES])
    session_device = rng.choice(len(DEVICES), n_sessions, p=dev_p / dev_p.sum())
    session_bot = rng.random(n_sessions) < float(sim["bot_session_rate"])

    req_session = np.repeat(np.arange(n_sessions), reqs)
    first = np.concatenate([[0], np.cumsum(reqs)[:-1]])
    gap = rng.exponential(float(sim["session_gap_seconds"]) * 1e6, n_req)
    gap[first] = 0.0
    elapsed = np.cumsum(gap)
    elapsed -= np.repeat(elapsed[first], reqs)
    elapsed = elapsed.astype(np.int64)
    span = np.maximum.reduceat(elapsed, first)
    # A session that would run past midnight starts earlier by its span, so it ends where it began.
    start_us = np.maximum(np.where(start_us + span < DAY_US, start_us, start_us - span), 0)
    session_rank = np.empty(n_sessions, np.int64)
    session_rank[np.argsort(start_us, kind="stable")] = np.arange(n_sessions)  # session ids follow time
    ts_us = np.minimum(start_us[req_session] + elapsed, DAY_US - 1)
    order = np.argsort(ts_us, kind="stable")  # request ids follow time
    ts_us, req_session, lengths = ts_us[order], req_session[order], lengths[order]
    req_user = session_user[req_session]
    is_search = rng.random(n_req) < float(sim["search_share"])

    # Candidates per request.
    by_cat, by_ptype = _Groups.of(world.cat, n_cat), _Groups.of(world.ptype, len(world.ptype_names))
    all_items = _Groups.of(np.zeros(n_items, np.int64), 1)
    cand = np.empty((n_req, n_cand), np.int64)
    s_idx, r_idx = np.flatnonzero(is_search), np.flatnonzero(~is_search)

    mix = {k: float(v) for k, v in sim["search_candidate_mix"].items()}
    mix_total = mix["product_type"] + mix["category"] + mix["random"]
    n_pt = int(round(n_cand * mix["product_type"] / mix_total))
    n_cat_slots = int(round(n_cand * mix["category"] / mix_total))
    if n_pt < 1 or n_pt + n_cat_slots > n_cand:
        raise ValueError(f"simulate.search_candidate_mix gives {n_pt} product-type and {n_cat_slots} "
                         f"category slots out of {n_cand}")
    cdf = world.user_pref_cdf[req_user[s_idx]]
    target_cat = np.minimum((cdf < rng.random(len(s_idx))[:, None]).sum(1), n_cat - 1)
    target = by_cat.draw(rng.random(len(s_idx)), target_cat)
    cand[s_idx, 0] = target
    cand[s_idx, 1:n_pt] = by_ptype.draw(rng.random((len(s_idx), n_pt - 1)), world.ptype[target])
    cand[s_idx, n_pt:n_pt + n_cat_slots] = by_cat.draw(rng.random((len(s_idx), n_cat_slots)), target_cat)
    cand[s_idx, n_pt + n_cat_slots:] = all_items.draw(
        rng.random((len(s_idx), n_cand - n_pt - n_cat_slots)), np.zeros(len(s_idx), np.int64))
    queries, q_brand, q_colour, q_material = make_queries(rng, world, target, sim)

    mix = {k: float(v) for k, v in sim["recommend_candidate_mix"].items()}
    n_pref = int(round(n_cand * mix["preferred"] / (mix["preferred"] + mix["random"])))
    if not 0 <= n_pref <= n_cand:
        raise ValueError(f"simulate.recommend_candidate_mix.preferred gives {n_pref} slots out of {n_cand}")
    cdf = world.user_pref_cdf[req_user[r_idx]]
    slot_cat = np.minimum((cdf[:, None, :] < rng.random((len(r_idx), n_pref))[..., None]).sum(-1), n_cat - 1)
    cand[r_idx, :n_pref] = by_cat.draw(rng.random(slot_cat.shape), slot_cat)
    cand[r_idx, n_pref:] = all_items.draw(rng.random((len(r_idx), n_cand - n_pref)),
                                          np.zeros(len(r_idx), np.int64))

    # A candidate drawn twice counts once; the list can be no longer than the distinct candidates.
    cand = np.sort(cand, axis=1)
    valid = np.ones_like(cand, dtype=bool)
    valid[:, 1:] = cand[:, 1:] != cand[:, :-1]
    lengths = np.minimum(lengths, valid.sum(1))

    # The day's discounts set the shown prices, which relevance weighs against each user's price level.
    disc = np.where(rng.random(n_items) < float(sim["discount_share"]),
                    rng.uniform(*(float(v) for v in sim["discount_range"]), n_items), 0.0)
    shown_price = np.round(world.price * (1.0 - disc), 2)
    rel = relevance(world, sim, cand, req_user, shown_price, s_idx, target, target_cat,
                    (q_brand, q_colour, q_material))

    rank, rank_prop = plackett_luce(rng, float(sim["ranker_score_scale"]) * rel, valid, beta, l_hi)
    shown = np.arange(l_hi)[None, :] < lengths[:, None]
    req_of_row, col_of_row = np.nonzero(shown)
    item_of_row = np.take_along_axis(cand, rank, 1)[shown]
    rel_of_row = np.take_along_axis(rel, rank, 1)[shown]
    propensity = rank_prop[shown]
    position = col_of_row + 1
    n_rows = len(item_of_row)

    # Position-based click model, then purchases, then noise (recorded in the truth file only).
    row_session = req_session[req_of_row]
    u = rng.random((6, n_rows))
    real_click, real_buy = user_response(u[:3], sim, position, rel_of_row)
    clicked, purchased, kind = inject_noise(u[3:], sim, real_click, real_buy, session_bot[row_session])

    row_user = req_user[req_of_row]
    req_query = np.full(n_req, None, dtype=object)
    req_query[s_idx] = queries
    tenure = np.maximum(world.user_signup_days_ago + (day_date - _as_date(sim["users_as_of"])).days, 0)
    event_ids = np.array([f"e{tag}-{k:07d}" for k in range(1, n_rows + 1)], dtype=object)
    impressions = pa.Table.from_pandas(pd.DataFrame({
        "event_id": event_ids,
        "ts": pd.to_datetime(day_start_us + ts_us[req_of_row], unit="us", utc=True),
        "request_id": ids(f"r{tag}-", n_req, 6)[req_of_row],
        "user_id": world.user_ids[row_user],
        "session_id": ids(f"s{tag}-", n_sessions, 6)[session_rank[row_session]],
        "surface": np.where(is_search, "search", "recommend").astype(object)[req_of_row],
        "query": req_query[req_of_row],
        "item_id": world.item_ids[item_of_row],
        "position": position.astype(np.int64),
        "clicked": clicked.astype(np.int64),
        "purchased": purchased.astype(np.int64),
        "propensity": propensity,
        "price": shown_price[item_of_row],
        "f_device": np.array(DEVICES, dtype=object)[session_device[row_session]],
        "f_user_tenure_days": tenure[row_user].astype(np.int64),
    }), schema=SIM_IMPRESSION_SCHEMA, preserve_index=False).replace_schema_metadata(None)
    truth = pa.Table.from_pandas(pd.DataFrame({
        "event_id": event_ids,
        "is_noise": kind > 0,
        "noise_kind": np.array(NOISE_KINDS, dtype=object)[kind],
        "relevance": rel_of_row,
    }), schema=TRUTH_SCHEMA, preserve_index=False).replace_schema_metadata(None)
    stats = {"rows": n_rows, "requests": n_req, "sessions": n_sessions,
             "ctr": float(clicked.mean()), "purchase_rate": float(purchased.mean()),
             "noise_share": float((kind > 0).mean())}
    return impressions, truth, stats
