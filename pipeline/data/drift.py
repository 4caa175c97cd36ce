"""Day statistics and their drift against the previous days: what a contract rule cannot see.

Each statistic gets a warn and a fail threshold (params: validate.drift.checks). The change is
measured against the mean of the window's earlier days: `relative` |x - m| / m, `absolute` |x - m|,
or `value`: x itself (for shares that are already a comparison with the past, like new items).

Rates (click-through overall and by position, purchase rate, null rates) are also judged on the
counts behind them: a change beyond the thresholds counts only when Fisher's exact test of the day's
count against the earlier days' pooled count says chance would rarely give it (p below
validate.drift.rate_alpha). On a sparse log, 0 clicks at position 2 where 2.7 were expected is chance,
not drift; on a large log any change past the thresholds is significant and decides as before.
The new-item and new-query shares are judged the same way against the log's own earlier novelty
(each earlier day's new rows against the days before it), one-sided: a large catalog that shows new
items every day is not drifting, a day far newer than its log's usual is. With no earlier novelty to
compare with (the window's second day), the share's thresholds alone decide.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact

from pipeline.data.contract import (
    ContractError,
    DayPaths,
    days_on_disk,
    files_digest,
    impression_parts,
    read_impressions,
)

PASSED, WARNING, FAILED, SKIPPED = "passed", "warning", "failed", "skipped"
CHANGE_KINDS = ("relative", "absolute", "value")
NULLABLE_COLUMNS = ("propensity", "price")


def previous_days(data_dir: str | Path, day: str, window: int) -> list[str]:
    """The last `window` days before `day` that have an impressions folder, oldest first."""
    days = [d for d in days_on_disk(data_dir) if d < day]
    return days[-window:] if window > 0 else []


def fingerprint(data_dir: str | Path, day: str) -> str:
    """Content hash of a day's impression files: changes exactly when the day is rewritten."""
    return files_digest(impression_parts(DayPaths(Path(data_dir), day)))


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


def day_statistics(impressions: pd.DataFrame, positions: int) -> dict[str, float | None]:
    """The statistics of one day; the new-item and new-query shares, which need the earlier days, are
    left None here and filled by statistics_over."""
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
    stats["new_item_share"] = stats["new_query_share"] = None
    words = queries.str.split().str.len()
    stats["query_length_mean"] = _rate(words)
    stats["query_length_p90"] = _quantile(words, 0.9)
    stats["price_p50"] = _quantile(impressions["price"], 0.5)
    stats["price_p90"] = _quantile(impressions["price"], 0.9)
    return stats


def rate_counts(impressions: pd.DataFrame, positions: int) -> dict[str, tuple[int, int]]:
    """(events, rows) behind each rate statistic of day_statistics: what its sampling noise depends on."""
    clicked = pd.to_numeric(impressions["clicked"], errors="coerce").fillna(0)
    position = pd.to_numeric(impressions["position"], errors="coerce")
    counts = {"ctr": (int(clicked.sum()), len(clicked)),
              "purchase_rate": (int(pd.to_numeric(impressions["purchased"], errors="coerce").fillna(0).sum()),
                                len(impressions))}
    for p in range(1, positions + 1):
        at = clicked[position == p]
        counts[f"ctr_position_{p}"] = (int(at.sum()), len(at))
    for column in [*NULLABLE_COLUMNS, *sorted(c for c in impressions.columns if c.startswith("f_"))]:
        if column in impressions:
            counts[f"null_rate_{column}"] = (int(impressions[column].isna().sum()), len(impressions))
    return counts


def novelty_counts(days: list[tuple[str, pd.DataFrame]]) -> list[dict[str, tuple[int, int]]]:
    """(new rows, rows) of each day's new_item_share and new_query_share: rows on items (queries) no
    earlier day showed; the first day has none. statistics_over derives the shares from them."""
    seen_items: set = set()
    seen_queries: set = set()
    out = []
    for _, frame in days:
        items, queries = frame["item_id"].dropna(), frame["query"].dropna()
        counts = {}
        if seen_items:
            counts["new_item_share"] = (int((~items.isin(seen_items)).sum()), len(items))
        if seen_queries:
            counts["new_query_share"] = (int((~queries.isin(seen_queries)).sum()), len(queries))
        out.append(counts)
        seen_items |= set(items)
        seen_queries |= set(queries)
    return out


def chance_p_value(today: tuple[int, int], history: tuple[int, int], alternative: str = "two-sided") -> float:
    """Fisher exact p-value of the day's (events, rows) against the earlier days' pooled ones
    (`alternative` "greater": only a day whose rate is above theirs counts against chance)."""
    (k, n), (k_past, n_past) = today, history
    return float(fisher_exact([[k, n - k], [k_past, n_past - k_past]], alternative=alternative).pvalue)


def statistics_over(days: list[tuple[str, pd.DataFrame]], positions: int,
                    novelty: list[dict[str, tuple[int, int]]] | None = None) -> list[dict]:
    """Statistics of each day, oldest first; each day's new shares are against the days before it
    (from `novelty`, novelty_counts of the same days, counted here when not given)."""
    novelty = novelty_counts(days) if novelty is None else novelty
    out = []
    for (day, frame), counts in zip(days, novelty):
        stats = day_statistics(frame, positions)
        for name, (new, rows) in counts.items():
            stats[name] = round(new / rows, 6) if rows else None
        out.append({"day": day, **stats})
    return out


def rule_name(statistic: str, checks: dict) -> str | None:
    """`ctr_position_3` is governed by `ctr_position`, `null_rate_price` by `null_rate`."""
    if statistic in checks:
        return statistic
    for prefix in ("ctr_position", "null_rate"):
        if statistic.startswith(prefix + "_") and prefix in checks:
            return prefix
    return None


def rule_for(statistic: str, checks: dict) -> dict | None:
    name = rule_name(statistic, checks)
    return None if name is None else checks[name]


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


def check(statistic: str, today: dict, history: list[dict], rule: dict, min_history: int,
          counts: tuple[tuple[int, int], tuple[int, int]] | None = None, alpha: float = 0.0,
          key: str | None = None) -> dict:
    """`counts`: the rate's (events, rows) of the day and of the earlier days pooled; with `alpha` > 0 a
    change past the thresholds that Fisher's test puts within chance (p >= alpha) passes. `key`: the
    params path of the rule, named in the detail."""
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
    detail = describe(statistic, value, baseline, amount, rule, key)
    if counts is not None and (rule["change"] != "value" or counts[1][1] > 0):
        # A value check (a share of new items or queries) is judged against the log's own earlier
        # novelty when it has some: a large catalog shows new items every day, and a few rows are noisy.
        (k, n), (k_past, n_past) = counts
        expected = round(n * k_past / n_past, 2) if n_past else None
        result.update(events=k, rows=n, expected_events=expected)
        if status != PASSED and alpha > 0 and n_past > 0:
            p = chance_p_value(counts[0], counts[1], "greater" if rule["change"] == "value" else "two-sided")
            result["p_value"] = round(p, 6)
            if p >= alpha:
                status = PASSED
                detail += (f"; within chance at these counts: {k} of {n} rows where the earlier days give "
                           f"{expected} (Fisher p={p:.3g} >= validate.drift.rate_alpha={alpha:g})")
    return {**result, "change": shown, "status": status, "detail": detail}


def describe(statistic: str, value: float, baseline: float | None, amount: float, rule: dict,
             key: str | None = None) -> str:
    knob = f": {key}" if key else ""
    if rule["change"] == "value":
        return f"{statistic}={value:.4g} (warn at {rule['warn']}, fail at {rule['fail']}{knob})"
    unit = "%" if rule["change"] == "relative" else ""
    scale = 100 if unit else 1
    moved = ("up from 0" if amount == float("inf") else f"{amount * scale:.3g}{unit}")
    return (f"{statistic}={value:.4g} vs mean {baseline:.4g} of earlier days: change {moved} "
            f"(warn at {rule['warn'] * scale:g}{unit}, fail at {rule['fail'] * scale:g}{unit}{knob})")


def load_window(data_dir: str | Path, earlier_days: list[str]) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """The earlier days' impressions, oldest first, and the days that could not be read."""
    frames, unreadable = [], []
    for earlier in earlier_days:
        try:
            frames.append((earlier, read_impressions(data_dir, earlier)))
        except ContractError as exc:
            unreadable.append(f"{earlier}: {exc}")
    return frames, unreadable


def rate_alpha(cfg: dict) -> float:
    alpha = cfg.get("rate_alpha", 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise ValueError(f"validate.drift.rate_alpha must be a number in [0, 1), got {alpha!r}")
    return float(alpha)


def pooled(today: dict[str, tuple[int, int]], past: list[dict[str, tuple[int, int]]]
           ) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Each statistic's (events, rows) on the day, and summed over the earlier days that have it."""
    out = {}
    for name, counts in today.items():
        having = [p[name] for p in past if name in p and p[name][1] > 0]
        out[name] = (counts, (sum(k for k, _ in having), sum(n for _, n in having)))
    return out


def pooled_counts(today_frame: pd.DataFrame, frames: list[tuple[str, pd.DataFrame]],
                  positions: int) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Each rate's (events, rows) on the day, and summed over the earlier days that have it."""
    return pooled(rate_counts(today_frame, positions), [rate_counts(frame, positions) for _, frame in frames])


def drift_report(day: str, today_frame: pd.DataFrame, frames: list[tuple[str, pd.DataFrame]],
                 unreadable: list[str], cfg: dict) -> dict:
    """Statistics of the day and its window, and one check per statistic that has a rule."""
    positions = int(cfg["positions"])
    novelty = novelty_counts([*frames, (day, today_frame)])
    series = statistics_over([*frames, (day, today_frame)], positions, novelty)
    history, today = series[:-1], series[-1]
    counts = {**pooled_counts(today_frame, frames, positions), **pooled(novelty[-1], novelty[:-1])}
    alpha = rate_alpha(cfg)
    checks = [check(name, today, history, cfg["checks"][rule], int(cfg["min_history_days"]), counts.get(name),
                    alpha, f"validate.drift.checks.{rule}")
              for name in today if name != "day" and (rule := rule_name(name, cfg["checks"])) is not None]
    return {"days": [d for d, _ in frames], "unreadable_days": unreadable, "statistics": series, "checks": checks}
