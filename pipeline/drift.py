"""Day statistics and their drift against the previous days: what a contract rule cannot see.

Each statistic gets a warn and a fail threshold (params: validate.drift.checks). The change is
measured against the mean of the window's earlier days: `relative` |x - m| / m, `absolute` |x - m|,
or `value`: x itself (for shares that are already a comparison with the past, like new items).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.contract import ContractError, DayPaths, impression_parts, read_impressions

PASSED, WARNING, FAILED, SKIPPED = "passed", "warning", "failed", "skipped"
CHANGE_KINDS = ("relative", "absolute", "value")
NULLABLE_COLUMNS = ("propensity", "price")


def previous_days(data_dir: str | Path, day: str, window: int) -> list[str]:
    """The last `window` days before `day` that have an impressions folder, oldest first."""
    folder = Path(data_dir) / "impressions"
    days = sorted(p.name[3:] for p in folder.glob("dt=*") if p.is_dir() and p.name[3:] < day)
    return days[-window:] if window > 0 else []


def fingerprint(data_dir: str | Path, day: str) -> str:
    """Content hash of a day's impression files: changes exactly when the day is rewritten."""
    digest = hashlib.sha256()
    for part in impression_parts(DayPaths(Path(data_dir), day)):
        digest.update(part.name.encode())
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def window_manifest(data_dir: str | Path, day: str, window: int) -> dict:
    """What the drift checks of `day` read, so a change to an earlier day reruns validation."""
    entries = []
    for earlier in previous_days(data_dir, day, window):
        try:
            entries.append({"day": earlier, "fingerprint": fingerprint(data_dir, earlier)})
        except ContractError:
            continue  # an unreadable earlier day is no baseline
    return {"day": day, "window_days": window, "previous": entries}


def _rate(series: pd.Series) -> float | None:
    return round(float(series.mean()), 6) if len(series) else None


def _quantile(series: pd.Series, q: float) -> float | None:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return round(float(values.quantile(q)), 6) if len(values) else None


def day_statistics(impressions: pd.DataFrame, positions: int, seen_items: set | None,
                   seen_queries: set | None) -> dict[str, float | None]:
    """The statistics of one day; new-item and new-query shares need the earlier days' sets."""
    stats: dict[str, float | None] = {"row_count": float(len(impressions))}
    clicked = pd.to_numeric(impressions["clicked"], errors="coerce")
    stats["ctr"] = _rate(clicked)
    position = pd.to_numeric(impressions["position"], errors="coerce")
    for p in range(1, positions + 1):
        stats[f"ctr_position_{p}"] = _rate(clicked[position == p])
    stats["purchase_rate"] = _rate(pd.to_numeric(impressions["purchased"], errors="coerce"))
    for column in [*NULLABLE_COLUMNS, *sorted(c for c in impressions.columns if c.startswith("f_"))]:
        if column in impressions:
            stats[f"null_rate_{column}"] = _rate(impressions[column].isna())
    queries = impressions["query"].dropna()
    items = impressions["item_id"].dropna()
    stats["new_item_share"] = _rate(~items.isin(seen_items)) if seen_items else None
    stats["new_query_share"] = _rate(~queries.isin(seen_queries)) if seen_queries else None
    words = queries.str.split().str.len()
    stats["query_length_mean"] = _rate(words)
    stats["query_length_p90"] = _quantile(words, 0.9)
    stats["price_p50"] = _quantile(impressions["price"], 0.5)
    stats["price_p90"] = _quantile(impressions["price"], 0.9)
    return stats


def statistics_over(days: list[tuple[str, pd.DataFrame]], positions: int) -> list[dict]:
    """Statistics of each day, oldest first; each day's new shares are against the days before it."""
    seen_items: set = set()
    seen_queries: set = set()
    out = []
    for day, frame in days:
        out.append({"day": day, **day_statistics(frame, positions, seen_items or None, seen_queries or None)})
        seen_items |= set(frame["item_id"].dropna())
        seen_queries |= set(frame["query"].dropna())
    return out


def rule_for(statistic: str, checks: dict) -> dict | None:
    """`ctr_position_3` is governed by `ctr_position`, `null_rate_price` by `null_rate`."""
    if statistic in checks:
        return checks[statistic]
    for prefix in ("ctr_position", "null_rate"):
        if statistic.startswith(prefix + "_") and prefix in checks:
            return checks[prefix]
    return None


def change(value: float, baseline: float, kind: str) -> float:
    if kind == "absolute":
        return abs(value - baseline)
    if baseline == 0:
        return 0.0 if value == 0 else float("inf")
    return abs(value - baseline) / abs(baseline)


def bands(baseline: float | None, rule: dict) -> dict:
    """The values where warn and fail start, for the report's charts."""
    kind, warn, fail = rule["change"], rule["warn"], rule["fail"]
    if kind == "value":
        return {"warn": [None, warn], "fail": [None, fail]}
    if baseline is None:
        return {}
    if kind == "absolute":
        return {"warn": [baseline - warn, baseline + warn], "fail": [baseline - fail, baseline + fail]}
    return {"warn": [baseline * (1 - warn), baseline * (1 + warn)],
            "fail": [baseline * (1 - fail), baseline * (1 + fail)]}


def check(statistic: str, today: dict, history: list[dict], rule: dict, min_history: int) -> dict:
    if rule["change"] not in CHANGE_KINDS:
        raise ValueError(f"validate.drift.checks: change {rule['change']!r} for {statistic} is not one of {CHANGE_KINDS}")
    value = today[statistic]
    past = [h[statistic] for h in history if h.get(statistic) is not None]
    baseline = round(float(np.mean(past)), 6) if past else None
    result = {"statistic": statistic, "value": value, "baseline": baseline, "change_kind": rule["change"],
              "warn": rule["warn"], "fail": rule["fail"], "history_days": len(past),
              "series": [{"day": h["day"], "value": h.get(statistic)} for h in history]
              + [{"day": today["day"], "value": value}]}
    result["bands"] = bands(baseline, rule)
    if value is None:
        return {**result, "change": None, "status": SKIPPED, "detail": "no value for this day"}
    if rule["change"] == "value":
        amount = value
    elif len(past) < min_history:
        return {**result, "change": None, "status": SKIPPED,
                "detail": f"{len(past)} earlier day(s), at least {min_history} needed"}
    else:
        amount = change(value, baseline, rule["change"])
    status = FAILED if amount >= rule["fail"] else WARNING if amount >= rule["warn"] else PASSED
    shown = "inf" if amount == float("inf") else round(amount, 6)
    return {**result, "change": shown, "status": status, "detail": describe(statistic, value, baseline, amount, rule)}


def describe(statistic: str, value: float, baseline: float | None, amount: float, rule: dict) -> str:
    if rule["change"] == "value":
        return f"{statistic}={value:.4g} (warn at {rule['warn']}, fail at {rule['fail']})"
    unit = "%" if rule["change"] == "relative" else ""
    scale = 100 if unit else 1
    return (f"{statistic}={value:.4g} vs mean {baseline:.4g} of earlier days: change {amount * scale:.3g}{unit} "
            f"(warn at {rule['warn'] * scale:g}{unit}, fail at {rule['fail'] * scale:g}{unit})")


def load_window(data_dir: str | Path, earlier_days: list[str]) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """The earlier days' impressions, oldest first, and the days that could not be read."""
    frames, unreadable = [], []
    for earlier in earlier_days:
        try:
            frames.append((earlier, read_impressions(data_dir, earlier)))
        except ContractError as exc:
            unreadable.append(f"{earlier}: {exc}")
    return frames, unreadable


def drift_report(day: str, today_frame: pd.DataFrame, frames: list[tuple[str, pd.DataFrame]],
                 unreadable: list[str], cfg: dict) -> dict:
    """Statistics of the day and its window, and one check per statistic that has a rule."""
    series = statistics_over([*frames, (day, today_frame)], int(cfg["positions"]))
    history, today = series[:-1], series[-1]
    checks = [check(name, today, history, rule, int(cfg["min_history_days"]))
              for name in today if name != "day" and (rule := rule_for(name, cfg["checks"])) is not None]
    return {"days": [d for d, _ in frames], "unreadable_days": unreadable, "statistics": series, "checks": checks}
