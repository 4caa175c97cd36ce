"""The drift window: the earlier days a day is compared with, named by the run's window manifest or, without
one, the last validate.drift.window_days days in the data folder. Against it the day is checked for event_ids
already logged on an earlier day (DATA_CONTRACT.md: event_id is unique across all days) and for drift of its
click, purchase, position, item and query statistics, which is skipped when a column it reads is broken."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.data import drift
from pipeline.data.validate.checks import (
    FAILED,
    SKIPPED,
    Check,
    DayData,
)
from pipeline.data.validate.rules import (
    IMPRESSIONS,
    ROW,
)

# Columns the drift statistics read; with any of them broken the statistics would mislead.
DRIFT_COLUMNS = ("clicked", "purchased", "position", "item_id", "query", "price")


@dataclass
class Window:
    """The earlier days the day is compared with (drift, and event_id uniqueness across days)."""

    frames: list[tuple[str, pd.DataFrame]]
    unreadable: list[str]


def read_window(data_dir: Path, day: str, section: dict, window_file: str | Path | None) -> Window | None:
    cfg = section.get("drift")
    if not cfg:
        return None
    if window_file is not None:
        earlier = [entry["day"] for entry in json.loads(Path(window_file).read_text())["previous"]]
    else:
        earlier = drift.previous_days(data_dir, day, int(cfg["window_days"]))
    return Window(*drift.load_window(data_dir, earlier))


def unique_across_days(data: DayData, window: Window | None, usable: bool) -> Check:
    """DATA_CONTRACT.md: event_id is unique across all days; checked against the window's days."""
    check = Check(IMPRESSIONS, "event_id unique across days (the drift window)", "event_id_unique_across_days",
                  ["event_id"], ROW, "window")
    if window is None or not usable:
        check.status = SKIPPED
        check.detail = "no window of earlier days" if usable else "not run: event_id missing or of the wrong type"
        return check
    first_seen: dict = {}
    for earlier, frame in window.frames:
        first_seen.update((event_id, earlier) for event_id in frame["event_id"].dropna() if event_id not in first_seen)
    repeated = data.impressions["event_id"].isin(first_seen.keys())
    check.unexpected_count = int(repeated.sum())
    check.unexpected_percent = 100.0 * check.unexpected_count / max(len(repeated), 1)
    check.rows = list(data.impressions.index[repeated])
    if check.unexpected_count:
        check.status = FAILED
        check.examples = [str(v) for v in data.impressions.loc[check.rows[:5], "event_id"]]
        days = sorted({first_seen[e] for e in data.impressions.loc[check.rows, "event_id"]})
        check.detail = f"already logged on {', '.join(days[:5])}" + (" and more" if len(days) > 5 else "")
    return check


def day_drift(day: str, data: DayData, checks: list[Check], section: dict, window: Window | None) -> dict:
    if window is None:
        return {"skipped": "no validate.drift section in params", "checks": [], "statistics": []}
    broken = sorted({col for c in checks if c.table == IMPRESSIONS and c.level != ROW and c.status == FAILED
                     for col in c.columns if col in DRIFT_COLUMNS})
    if broken:
        return {"skipped": f"column(s) {', '.join(broken)} broken", "checks": [], "statistics": []}
    return drift.drift_report(day, data.impressions, window.frames, window.unreadable, section["drift"])
