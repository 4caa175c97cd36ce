"""Peak memory and speed of the train stage on a training window of large days.

    python benchmarks/window_memory.py [--rows-per-day 10000000] [--windows 1,2] [--steps 400]
        [--workdir DIR] [--params params.yaml] [--out benchmarks/results/window_memory.json]

Writes `max(--windows)` days of a contract-shaped log (the generator of ingest_memory.py: random values,
50,000 items, 200,000 users, --rows-per-day impressions a day), ingests it, embeds its unique texts once
with the base encoder (kept in --workdir for the next run) and gives every impression weight 1 in a
per-day importance folder (work/importance/dt=DAY/scores.parquet, as the importance stage lays it out;
importance_memory.py measures the scoring itself). Then, for each window size, runs
`python -m pipeline train --window` on the window ending at the last day in a child process, one epoch
cut at --steps optimizer steps, and reads that child's own peak RSS from wait4(). The window loads
in full, the training loop runs --steps steps, and validation and calibration score their whole slices,
so the peak is the stage's, and the loop's rows/s is timed from the steps it ran.

Prints, per window: peak RSS against the 8 GiB target, load rows/s, training rows/s; then a line fitted
through the runs (peak = fixed + bytes per row x rows) and what it projects for a 7-day window.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from importance_memory import embed_texts  # noqa: E402
from ingest_memory import START, generate, run_ingest, run_measured  # noqa: E402

TARGET_GIB = 8.0
PROJECTED_DAYS = 7
TRAINED = re.compile(r"train: \S+ (\d+) rows x (\d+) epochs \((\d+) steps\) on (\S+) in ([\d.]+)s")
# The train stage's progress bar: "train:  70%|...| 30.7k/43.7k [00:08<00:03, 3.45krow/s]"
PROGRESS = re.compile(r"train:\s+\d+%\|[^|]*\|\s*([\d.]+)([kMG]?)/\S+ \[([\d:]+)<")
SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}


def loop_rate(output: str) -> float | None:
    """Rows per second of the training loop alone: the bar's last count over its elapsed time, before
    validation and calibration (which the stage's own seconds include)."""
    readings = []
    for count, scale, elapsed in PROGRESS.findall(output):
        seconds = 0
        for part in elapsed.split(":"):
            seconds = seconds * 60 + int(part)
        if seconds:
            readings.append(float(count) * SCALE[scale] / seconds)
    return readings[-1] if readings else None


def day_names(count: int) -> list[str]:
    return [(START + timedelta(days=k)).isoformat() for k in range(count)]


def uniform_weights(raw: Path, importance: Path, days: list[str]) -> None:
    """weight 1 for every impression of each day, in the importance stage's per-day layout."""
    for day in days:
        ids = pa.concat_arrays([pq.read_table(part, columns=["event_id"]).column("event_id").combine_chunks()
                                for part in sorted((raw / "impressions" / f"dt={day}").glob("part-*.parquet"))])
        out = importance / f"dt={day}"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"event_id": ids, "weight": pa.array([1.0] * len(ids), pa.float64())}),
                       out / "scores.parquet")


def run_window(workdir: Path, days: list[str], params_file: Path, rows_per_day: int) -> dict:
    window_file = workdir / f"window-{len(days)}.json"
    window_file.write_text(json.dumps({"day": days[-1], "window_days": len(days), "days": days, "left_out": []}))
    out = workdir / f"train-{len(days)}"
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak_gib, output = run_measured([
        sys.executable, "-m", "pipeline", "train", "--data", str(workdir / "raw"), "--day", days[-1],
        "--window", str(window_file), "--embeddings", str(workdir / "embeddings"),
        "--weights", str(workdir / "importance"), "--params", str(params_file), "--out", str(out)])
    found = TRAINED.search(output)
    if not found:
        raise SystemExit(f"no training summary in the train stage's output:\n{output[-3000:]}")
    fitted_rows, _, steps, device, fit_seconds = found.groups()
    metrics = json.loads((out / "metrics.json").read_text())
    batch = yaml.safe_load(params_file.read_text())["train"]
    rows = rows_per_day * len(days)
    load_seconds = seconds - float(fit_seconds)
    shutil.rmtree(out, ignore_errors=True)
    return {"days": days, "rows": rows, "fitted_rows": int(fitted_rows), "steps": int(steps), "device": device,
            "seconds": round(seconds, 1), "train_loop_seconds": float(fit_seconds),
            "load_and_build_seconds": round(load_seconds, 1),
            "load_rows_per_second": round(rows / load_seconds),
            "train_rows_per_second": round(loop_rate(output) or 0),
            "train_stage_rows_per_second": round(int(steps) * batch["batch_size"] * batch["accumulation_steps"]
                                                 / float(fit_seconds)),
            "rows_by_day": metrics["window"]["rows_by_day"],
            "peak_rss_gib": round(peak_gib, 3), "rss_ratio_to_target": round(peak_gib / TARGET_GIB, 3)}


def fitted_line(runs: list[dict]) -> dict | None:
    """peak RSS = fixed + per_row x rows through the smallest and largest run."""
    if len(runs) < 2:
        return None
    low, high = min(runs, key=lambda r: r["rows"]), max(runs, key=lambda r: r["rows"])
    per_row = (high["peak_rss_gib"] - low["peak_rss_gib"]) * 2 ** 30 / (high["rows"] - low["rows"])
    fixed = high["peak_rss_gib"] - per_row * high["rows"] / 2 ** 30
    return {"fixed_gib": round(fixed, 3), "bytes_per_row": round(per_row, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=10_000_000)
    parser.add_argument("--windows", default="1,2", help="window sizes (days) to train on, each ending at the last day")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps the training loop runs")
    parser.add_argument("--workdir", type=Path, default=None, help="where inputs and outputs go (default: a temp dir)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "window_memory.json")
    args = parser.parse_args()
    windows = sorted(int(w) for w in args.windows.split(","))
    params = yaml.safe_load(args.params.read_text())
    params["train"] = {**params["train"], "epochs": 1, "max_steps": args.steps, "checkpoint_every_steps": 0,
                       "warm_start": False}

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="window-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    days = day_names(windows[-1])
    rows = args.rows_per_day * len(days)
    runs = []
    try:
        params_file = workdir / "params.yaml"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        started = time.perf_counter()
        raw = workdir / "raw"
        on_disk = sum(pq.read_metadata(p).num_rows for p in raw.glob("impressions/dt=*/part-*.parquet"))
        if on_disk != rows:  # kept from an earlier run of the same size
            files = generate(workdir, rows, len(days), csv=False, shuffled=False)
            shutil.rmtree(raw, ignore_errors=True)
            ingested = run_ingest(files["parquet"], files["catalog"], raw, params_file)
            if ingested["rows_written"] != rows or ingested["days"] != [f"dt={d}" for d in days]:
                raise SystemExit(f"ingest wrote {ingested['rows_written']} rows on {ingested['days']}")
            for kept in (files["parquet"], files["catalog"]):
                kept.unlink()
            shutil.rmtree(workdir / "embeddings", ignore_errors=True)
        if not (workdir / "embeddings" / "texts.parquet").is_file():
            embed_texts(raw, workdir / "embeddings", params)
        uniform_weights(raw, workdir / "importance", days)
        print(f"{len(days)} days of {args.rows_per_day:,} impressions ready in {time.perf_counter() - started:.0f}s",
              flush=True)
        for size in windows:
            run = run_window(workdir, days[-size:], params_file, args.rows_per_day)
            runs.append(run)
            print(f"window of {size} day(s), {run['rows']:,} impressions: {run['seconds']:.0f}s "
                  f"(load and features {run['load_and_build_seconds']:.0f}s = {run['load_rows_per_second']:,} rows/s; "
                  f"{run['steps']} steps at {run['train_rows_per_second']:,} rows/s); peak RSS "
                  f"{run['peak_rss_gib']:.2f} GiB = {run['rss_ratio_to_target']:.2f} x the {TARGET_GIB:g} GiB target",
                  flush=True)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    line = fitted_line(runs)
    projection = None
    if line:
        rows_7 = PROJECTED_DAYS * args.rows_per_day
        largest = max(runs, key=lambda r: r["rows"])
        projection = {"days": PROJECTED_DAYS, "rows": rows_7,
                      "peak_rss_gib": round(line["fixed_gib"] + line["bytes_per_row"] * rows_7 / 2 ** 30, 2),
                      "load_seconds": round(rows_7 / largest["load_rows_per_second"]),
                      # an epoch fits the same share of the window's rows as the largest run did
                      "cpu_epoch_seconds": round(rows_7 * largest["fitted_rows"] / largest["rows"]
                                                 / largest["train_rows_per_second"])}
        print(f"peak RSS = {line['fixed_gib']:.2f} GiB + {line['bytes_per_row']:.0f} bytes x rows; a {PROJECTED_DAYS}-day "
              f"window of {rows_7:,} impressions: {projection['peak_rss_gib']:.1f} GiB, loaded in about "
              f"{projection['load_seconds']} s, one epoch on this CPU about {projection['cpu_epoch_seconds']} s")
    record = {"benchmark": "window_memory", "rows_per_day": args.rows_per_day, "steps": args.steps,
              "target_gib": TARGET_GIB, "runs": runs, "fit": line, "projection": projection,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "torch_threads": os.environ.get("OMP_NUM_THREADS")},
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["peak_rss_gib"] < TARGET_GIB for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
