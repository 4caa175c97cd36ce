"""The training window: the days a retrain of `day` trains on.

The window is the `train.window_days` calendar days ending at `day`. An earlier day is in it only when
its data passed validation (work/validate/dt=DAY/summary.json says so); the others are left out and
listed with the reason, so a reviewer sees every gap: no data, never validated (run or backfill that
day first), or rejected (days before the log's first day are no gap and are not listed). `day` itself
is always in: its own validate stage runs first in the run.

run/train_window.json (written by repro before `dvc repro`) holds the days and a content hash of each
earlier day's impressions and catalog, so the stages that read the window rerun exactly when it
changes (dvc.yaml cannot list a variable number of folders as deps).
"""
from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

from pipeline.data.contract import ContractError, DayPaths, days_on_disk, files_digest, impression_parts

NO_DATA = "no data: the day's impressions or catalog folder is missing"
NOT_VALIDATED = "not validated: run that day first (repro --day, or a backfill)"
REJECTED = "rejected by validate"


def window_days(params: dict) -> int:
    value = params["train"].get("window_days", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"train.window_days must be a whole number of days, at least 1, got {value!r}")
    return value


def calendar_days(day: str, count: int) -> list[str]:
    """The `count` calendar days ending at `day`, oldest first."""
    last = date.fromisoformat(day)
    return [(last - timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]


def fingerprint(data_dir: Path, day: str) -> str:
    """Content hash of a day's impression files and catalog: changes exactly when the day is rewritten."""
    paths = DayPaths(Path(data_dir), day)
    return files_digest([*impression_parts(paths), paths.catalog_file])


def validation_summary(validate_root: str | Path, day: str) -> dict | None:
    """The validate stage's summary.json of `day` (work/validate/dt=DAY), None when it has none that reads."""
    try:
        summary = json.loads((Path(validate_root) / f"dt={day}" / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def verdict(validate_root: Path, day: str) -> str | None:
    """None when the day passed validation, else why it is left out of a window."""
    summary = validation_summary(validate_root, day)
    if summary is None:
        return NOT_VALIDATED
    return None if summary.get("success") is True else REJECTED


def manifest(data_dir: str | Path, validate_root: str | Path, day: str, count: int) -> dict:
    """run/train_window.json: {day, window_days, days (oldest first, `day` last), earlier (each earlier
    day with its fingerprint), left_out (day and reason)}."""
    data_dir = Path(data_dir)
    on_disk = days_on_disk(data_dir)
    earlier, left_out = [], []
    # Days before the log's first day are no gap: the log starts later.
    for candidate in [d for d in calendar_days(day, count)[:-1] if on_disk and d >= on_disk[0]]:
        paths = DayPaths(data_dir, candidate)
        if not paths.impressions_dir.is_dir() or not paths.catalog_file.is_file():
            left_out.append({"day": candidate, "reason": NO_DATA})
            continue
        reason = verdict(Path(validate_root), candidate)
        if reason is None:
            try:
                earlier.append({"day": candidate, "fingerprint": fingerprint(data_dir, candidate)})
                continue
            except (ContractError, OSError) as exc:
                reason = f"unreadable: {exc}"
        left_out.append({"day": candidate, "reason": reason})
    return {"day": day, "window_days": count, "days": [e["day"] for e in earlier] + [day],
            "earlier": earlier, "left_out": left_out}


def read(path: str | Path) -> dict:
    try:
        window = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the training window ({exc}); `repro --day` writes it") from exc
    if not isinstance(window, dict) or not isinstance(window.get("days"), list) or not window["days"]:
        raise ValueError(f"{path}: not a training window (no list of days); `repro --day` writes it")
    return window


def earlier_days(window: dict, day: str) -> list[str]:
    """The window's days before `day`, oldest first; the window must be `day`'s."""
    if window.get("day") != day or window["days"][-1] != day:
        raise ValueError(f"the training window is {window.get('day')}'s, not {day}'s: run `repro --day {day}`, "
                         "which writes run/train_window.json")
    return list(window["days"][:-1])


def describe(window: dict) -> str:
    """One line: the days trained on and the gaps."""
    text = f"window of {window['window_days']} day(s) ending {window['day']}: training on {', '.join(window['days'])}"
    if window["left_out"]:
        text += "; left out " + "; ".join(f"{e['day']} ({e['reason']})" for e in window["left_out"])
    return text
