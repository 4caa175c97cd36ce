"""Noise injected into a clean log for the estimator benchmark (BENCHMARK_PROTOCOL.md), seeded.

Each kind has a rate, a fraction of what the protocol says: click_flip of impressions, false_click and
missed_click of the log's clicks, bot_sessions of sessions, duplicates of impressions. Protected rows
(the test slice) are never changed, copied or counted. Every changed or added row is noise; a bot
session's rows are all noise, whatever its random clicks happen to be.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("bot_sessions", "click_flip", "false_click", "missed_click", "duplicates")  # the order they apply in
DUPLICATE_SUFFIX = "~dup"


def parse_spec(text: str) -> dict[str, float]:
    """'false_click:0.2,bot_sessions:0.05' -> {kind: rate}; 'none' -> {}."""
    spec: dict[str, float] = {}
    for item in (part.strip() for part in str(text).split(",")):
        if item == "none":
            continue
        kind, sep, rate = item.partition(":")
        if kind not in KINDS or not sep:
            raise ValueError(f"noise {item!r}: expected KIND:RATE with KIND one of {', '.join(KINDS)} (or 'none')")
        try:
            value = float(rate)
        except ValueError:
            raise ValueError(f"noise {item!r}: rate {rate!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"noise {item!r}: rate must be within [0, 1]")
        if kind in spec:
            raise ValueError(f"noise {kind!r} is given twice")
        spec[kind] = value
    return spec


def inject(impressions: pd.DataFrame, spec: dict[str, float], seed: int,
           protected: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """(noisy copy of `impressions`, noise kind per row: '' for clean rows). Duplicates follow their
    original row, so requests stay together and a time split still sees them in order."""
    unknown = set(spec) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown noise kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    frame = impressions.reset_index(drop=True).copy()
    n = len(frame)
    free = np.ones(n, bool) if protected is None else ~np.asarray(protected, bool)
    clicked = frame["clicked"].to_numpy().astype(np.int64)
    purchased = frame["purchased"].to_numpy().astype(np.int64)
    kind = np.full(n, "", dtype=object)
    ctr = float(clicked[free].mean()) if free.any() else 0.0

    if spec.get("bot_sessions"):
        sessions = pd.Series(frame["session_id"].to_numpy())
        eligible = sessions[free].unique()  # sessions with a protected row stay human
        eligible = np.setdiff1d(eligible, sessions[~free].unique())
        bots = rng.choice(eligible, size=_count(spec["bot_sessions"], len(eligible), rng), replace=False)
        rows = np.flatnonzero(sessions.isin(bots).to_numpy())
        clicked[rows] = rng.random(len(rows)) < ctr
        purchased[rows] = 0
        kind[rows] = "bot_sessions"
    human = free & (kind == "")
    if spec.get("click_flip"):
        rows = _pick(rng, np.flatnonzero(human), _count(spec["click_flip"], int(human.sum()), rng))
        clicked[rows] = 1 - clicked[rows]
        purchased[rows] = 0  # a flipped-on click has no purchase; a flipped-off one loses its purchase
        kind[rows] = "click_flip"
    clicks = int(clicked[free & (kind == "")].sum())
    if spec.get("false_click"):
        rows = _pick(rng, np.flatnonzero(human & (kind == "") & (clicked == 0)), _count(spec["false_click"], clicks, rng))
        clicked[rows] = 1
        kind[rows] = "false_click"
    if spec.get("missed_click"):
        rows = _pick(rng, np.flatnonzero(human & (kind == "") & (clicked == 1)), _count(spec["missed_click"], clicks, rng))
        clicked[rows], purchased[rows] = 0, 0
        kind[rows] = "missed_click"
    frame["clicked"] = clicked.astype(frame["clicked"].dtype)
    frame["purchased"] = purchased.astype(frame["purchased"].dtype)

    if spec.get("duplicates"):
        rows = np.sort(_pick(rng, np.flatnonzero(free), _count(spec["duplicates"], int(free.sum()), rng)))
        copies = frame.iloc[rows].copy()
        copies["event_id"] = copies["event_id"].astype(str) + DUPLICATE_SUFFIX
        # Each copy right after its original: stable order by (original row, copy after it).
        order = np.argsort(np.r_[np.arange(n) * 2, rows * 2 + 1], kind="stable")
        frame = pd.concat([frame, copies], ignore_index=True).iloc[order].reset_index(drop=True)
        kind = np.r_[kind, np.full(len(rows), "duplicates", dtype=object)][order]
        for column in ("request_id", "user_id", "session_id"):  # keep categoricals categorical after concat
            if isinstance(impressions[column].dtype, pd.CategoricalDtype):
                frame[column] = frame[column].astype(impressions[column].dtype)
    return frame, kind


def _count(rate: float, of: int, rng: np.random.Generator) -> int:
    """rate x of, rounded at random (a tiny log still gets its expected share on average)."""
    exact = rate * of
    return min(of, int(exact) + int(rng.random() < exact - int(exact)))


def _pick(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    return rng.choice(candidates, size=min(count, len(candidates)), replace=False)
