"""Peak memory and speed of `python -m pipeline ingest` on a large impressions file.

    python benchmarks/ingest_memory.py [--rows 10000000] [--days 3] [--csv] [--shuffled]
        [--workdir DIR] [--params params.yaml] [--out benchmarks/results/ingest_memory.json]

Writes a contract-shaped impressions file (random values over --days days, rows in time order unless
--shuffled, two f_* features) and a catalog, both in chunks so generating them stays small, then runs the ingest command in a
child process per input format and reads that child's own peak RSS from wait4(). Prints rows/second and
peak RSS against the 3 GiB target and writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.contract import CATALOG_SCHEMA, IMPRESSION_SCHEMA  # noqa: E402

TARGET_GIB = 3.0
START = date(2026, 11, 1)
GEN_CHUNK = 1_000_000
N_ITEMS = 50_000
N_USERS = 200_000
LIST_LENGTH = 15
SCHEMA = pa.schema(list(IMPRESSION_SCHEMA) + [pa.field("f_device", pa.string()),
                                              pa.field("f_user_tenure_days", pa.int64())])


def ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def impressions_chunk(rng: np.random.Generator, first: int, n: int, total: int, days: int,
                      queries: np.ndarray, shuffled: bool = False) -> pa.Table:
    row = np.arange(first, first + n, dtype=np.int64)
    request = row // LIST_LENGTH
    n_requests = -(-total // LIST_LENGTH)
    start_us = int(datetime(START.year, START.month, START.day, tzinfo=timezone.utc).timestamp()) * 1_000_000
    # One instant per request: in time order, or scattered over the days (every chunk touches each day).
    slot = (request * 2_147_483_629) % n_requests if shuffled else request
    ts = start_us + slot * (days * 86_400_000_000 // n_requests)
    search = (request * 2654435761 % 1000) < 600  # a fixed 60% of requests are searches
    position = row % LIST_LENGTH + 1
    clicked = rng.random(n) < 0.25 / np.sqrt(position)
    query = pa.array(np.where(search, queries[request % len(queries)], None), pa.string())
    columns = {
        "event_id": ids("e", row, 10),
        "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "request_id": ids("r", request, 9),
        "user_id": ids("u", (request // 3 * 7919) % N_USERS, 6),
        "session_id": ids("s", request // 3, 9),
        "surface": pa.array(np.where(search, "search", "recommend"), pa.string()),
        "query": query,
        "item_id": ids("i", rng.integers(0, N_ITEMS, n), 5),
        "position": pa.array(position),
        "clicked": pa.array(clicked.astype(np.int64)),
        "purchased": pa.array((clicked & (rng.random(n) < 0.1)).astype(np.int64)),
        "propensity": pa.array(rng.uniform(0.01, 1.0, n)),
        "price": pa.array(np.round(np.exp(rng.normal(3.5, 0.8, n)), 2)),
        "f_device": pa.array(np.array(["mobile", "desktop", "tablet"])[rng.integers(0, 3, n)], pa.string()),
        "f_user_tenure_days": pa.array(rng.integers(0, 2000, n)),
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def generate(workdir: Path, rows: int, days: int, csv: bool, shuffled: bool) -> dict[str, Path]:
    rng = np.random.default_rng(20261101)
    words = np.array(["running", "shoes", "wireless", "headphones", "merino", "socks", "rain", "jacket",
                      "espresso", "machine", "yoga", "mat", "desk", "lamp", "dog", "bed"])
    queries = np.array([" ".join(rng.choice(words, rng.integers(1, 4))) for _ in range(5000)], dtype=object)
    files = {"parquet": workdir / "impressions.parquet", "catalog": workdir / "catalog.parquet"}
    parquet = pq.ParquetWriter(files["parquet"], SCHEMA)
    csv_writer = None
    if csv:
        files["csv"] = workdir / "impressions.csv"
        csv_writer = pacsv.CSVWriter(files["csv"], SCHEMA)
    for first in range(0, rows, GEN_CHUNK):
        chunk = impressions_chunk(rng, first, min(GEN_CHUNK, rows - first), rows, days, queries, shuffled)
        parquet.write_table(chunk)
        if csv_writer is not None:
            csv_writer.write_table(chunk)
    parquet.close()
    if csv_writer is not None:
        csv_writer.close()
    item = np.arange(N_ITEMS)
    catalog = pa.Table.from_pydict({
        "item_id": ids("i", item, 5),
        "title": ids("Item ", item, 5),
        "category": pa.array(np.array(["Shoes>Running>Men", "Home>Kitchen>Coffee", "Pets>Dogs>Beds"])[item % 3]),
        "brand": ids("Brand ", item % 300, 3),
        "price": pa.array(np.round(np.exp(rng.normal(3.5, 0.8, N_ITEMS)), 2)),
    }, schema=CATALOG_SCHEMA)
    pq.write_table(catalog, files["catalog"])
    return files


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """Run `command` from the repo root: (wall seconds, the child's own peak RSS in GiB, its output).
    Exits with the output when the command fails."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    # wait4 gives this child's own rusage, unlike RUSAGE_CHILDREN, which keeps the maximum over all children.
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command[2:4])} exited {code}:\n{output}")
    return seconds, usage.ru_maxrss / 2 ** 20, output


def run_ingest(impressions: Path, catalog: Path, out: Path, params: Path) -> dict:
    seconds, peak_gib, output = run_measured([sys.executable, "-m", "pipeline", "ingest", "--impressions",
                                              str(impressions), "--catalog", str(catalog), "--out", str(out),
                                              "--params", str(params)])
    rows_out = sum(pq.read_metadata(p).num_rows for p in (out / "impressions").glob("dt=*/part-*.parquet"))
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(peak_gib, 3),
            "rows_written": rows_out, "days": sorted(p.name for p in (out / "impressions").glob("dt=*")),
            "parts": len(list((out / "impressions").glob("dt=*/part-*.parquet"))),
            "log_tail": output.strip().splitlines()[-4:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--csv", action="store_true", help="also write and ingest the same rows as CSV")
    parser.add_argument("--shuffled", action="store_true",
                        help="rows out of time order, so every chunk spans all days (default: time order)")
    parser.add_argument("--workdir", type=Path, default=None, help="where inputs and outputs go (default: a temp dir)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest_memory.json")
    args = parser.parse_args()

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        files = generate(workdir, args.rows, args.days, args.csv, args.shuffled)
        generated = time.perf_counter() - started
        sizes = {k: round(p.stat().st_size / 2 ** 20, 1) for k, p in files.items()}
        print(f"generated {args.rows} rows over {args.days} days in {generated:.1f}s: "
              + ", ".join(f"{k} {v} MiB" for k, v in sizes.items()))
        runs = {}
        for fmt in [f for f in ("parquet", "csv") if f in files]:
            out = workdir / f"out-{fmt}"
            shutil.rmtree(out, ignore_errors=True)
            result = run_ingest(files[fmt], files["catalog"], out, args.params)
            if result["rows_written"] != args.rows:
                raise SystemExit(f"{fmt}: wrote {result['rows_written']} rows of {args.rows}")
            result["rows_per_second"] = round(args.rows / result["seconds"])
            result["rss_ratio_to_target"] = round(result["peak_rss_gib"] / TARGET_GIB, 3)
            runs[fmt] = result
            print(f"{fmt:8s} {args.rows} rows in {result['seconds']:.1f}s = {result['rows_per_second']:,} rows/s; "
                  f"peak RSS {result['peak_rss_gib']:.2f} GiB = {result['rss_ratio_to_target']:.2f} x the "
                  f"{TARGET_GIB:g} GiB target; {len(result['days'])} days, {result['parts']} part files")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {"benchmark": "ingest_memory", "rows": args.rows, "days": args.days, "shuffled": args.shuffled,
              "target_gib": TARGET_GIB,
              "input_mib": sizes, "generate_seconds": round(generated, 1), "runs": runs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pyarrow": pa.__version__},
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["peak_rss_gib"] < TARGET_GIB for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
