"""`python -m pipeline simulate`: seeded simulated e-commerce search and recommendation logs, in the data
contract's layout, with the ground truth (each row's injected noise and true relevance) beside them.
The catalog and the users come from the root seed alone; each day has its own random stream, so a
day's files depend only on the params and the day, never on which other days were simulated. Each
day's catalog, truth and impressions folders are replaced whole, impressions last.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_dir
from pipeline.data.contract import DayPaths
from pipeline.data.simulate.day import simulate_day
from pipeline.data.simulate.world import build_world
from pipeline.params import load_params

IMPRESSION_FILE = "part-00000.parquet"


def _write_in_own_dir(path: Path, table: pa.Table) -> None:
    """Replace the folder holding `path` whole, with `table` as its only file."""
    with atomic_dir(path.parent) as tmp:
        pq.write_table(table, tmp / path.name)


def run(start: str, days: int, out: Path, params: dict,
        log: Callable[[str], None] | None = None) -> dict:
    """Simulate `days` days from `start` into `out`; each day's folders are replaced whole."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    first = dt.date.fromisoformat(start)
    out = Path(out)
    world = build_world(params)
    summary: dict = {"days": [], "rows": {}}
    for k in range(days):
        t0 = time.perf_counter()
        day = (first + dt.timedelta(days=k)).isoformat()
        impressions, truth, stats = simulate_day(day, world, params)
        paths = DayPaths(out, day)
        _write_in_own_dir(paths.catalog_file, world.table)
        _write_in_own_dir(paths.truth_file, truth)
        # Impressions last: a day with impressions on disk has its catalog and truth beside it.
        _write_in_own_dir(paths.impressions_dir / IMPRESSION_FILE, impressions)
        summary["days"].append(day)
        summary["rows"][day] = stats["rows"]
        if log is not None:
            log(f"simulate {day}: {stats['rows']} impressions, {stats['requests']} requests, "
                f"{stats['sessions']} sessions, CTR {stats['ctr']:.3f}, purchases {stats['purchase_rate']:.4f}, "
                f"noise {stats['noise_share']:.3f}, {time.perf_counter() - t0:.1f}s -> {out}")
    return summary


def _day_arg(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {value!r}") from exc


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, type=_day_arg, help="first day, YYYY-MM-DD")
    parser.add_argument("--days", type=_positive_int, default=1, help="number of days (default 1)")
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output root (default data/raw)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--impressions-per-day", type=_positive_int, default=None,
                        help="override simulate.impressions_per_day")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.impressions_per_day is not None:
        params = copy.deepcopy(params)
        params["simulate"]["impressions_per_day"] = args.impressions_per_day
    run(args.start, args.days, args.out, params, log=print)
    return 0
