"""Peak memory and speed of `python -m pipeline importance` on a large log.

    python benchmarks/importance_memory.py [--rows 10000000] [--days 1] [--estimators click_model,...]
        [--workdir DIR] [--params params.yaml] [--out benchmarks/results/importance_memory.json]

Writes a contract-shaped log (the generator of ingest_memory.py: random values, 50,000 items, 5,000 queries),
ingests it into the contract's layout, embeds its unique texts once with the base encoder of params
(the pretrain stage's embeddings folder in a retrain), (kept in --workdir for the next run), then runs the importance command for each
estimator in a child process and reads that child's own peak RSS from wait4(). Prints rows/second and peak
RSS against the 4 GiB target and writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ingest_memory import generate, run_ingest, run_measured  # noqa: E402

TARGET_GIB = 4.0


def embed_texts(raw: Path, out: Path, params: dict) -> int:
    """The log's unique titles and queries embedded with the base encoder, saved as pretrain saves them."""
    from pipeline.model import embeddings
    from pipeline.model.dataset import embed_with_base

    catalog = pq.read_table(next((raw / "catalog").glob("dt=*")), columns=["title"]).column("title")
    queries = set()
    for part in (raw / "impressions").glob("dt=*/part-*.parquet"):
        queries |= set(pq.read_table(part, columns=["query"]).column("query").unique().drop_null().to_pylist())
    texts = sorted(set(catalog.drop_null().to_pylist()) | queries)
    table = embed_with_base(texts, params)
    embeddings.save(out, table.texts, table.vectors)
    return len(texts)


def run_importance(raw: Path, embeddings_dir: Path, estimator: str, out: Path, params: Path) -> dict:
    seconds, peak_gib, output = run_measured([
        sys.executable, "-m", "pipeline", "importance", "--data", str(raw), "--embeddings", str(embeddings_dir),
        "--estimator", estimator, "--params", str(params), "--out", str(out)])
    scored = pq.read_metadata(out / "scores.parquet").num_rows
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(peak_gib, 3),
            "rows_scored": scored, "log_tail": output.strip().splitlines()[-3:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--estimators", default="click_model,position_ipw,collaborative")
    parser.add_argument("--workdir", type=Path, default=None, help="where inputs and outputs go (default: a temp dir)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "importance_memory.json")
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="importance-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    runs = {}
    try:
        started = time.perf_counter()
        files = generate(workdir, args.rows, args.days, csv=False, shuffled=False)
        raw = workdir / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        ingested = run_ingest(files["parquet"], files["catalog"], raw, args.params)
        if ingested["rows_written"] != args.rows:
            raise SystemExit(f"ingest wrote {ingested['rows_written']} rows of {args.rows}")
        prepared = time.perf_counter() - started
        started = time.perf_counter()
        if (workdir / "embeddings" / "texts.parquet").is_file():  # the generator's texts do not change with --rows
            texts = pq.read_metadata(workdir / "embeddings" / "texts.parquet").num_rows
        else:
            texts = embed_texts(raw, workdir / "embeddings", params)
        embedded = time.perf_counter() - started
        print(f"log of {args.rows} rows over {args.days} days ready in {prepared:.0f}s; "
              f"{texts} texts embedded in {embedded:.0f}s")
        for estimator in args.estimators.split(","):
            out = workdir / f"out-{estimator}"
            shutil.rmtree(out, ignore_errors=True)
            result = run_importance(raw, workdir / "embeddings", estimator, out, args.params)
            if result["rows_scored"] != args.rows:
                raise SystemExit(f"{estimator}: scored {result['rows_scored']} rows of {args.rows}")
            result["rows_per_second"] = round(args.rows / result["seconds"])
            result["rss_ratio_to_target"] = round(result["peak_rss_gib"] / TARGET_GIB, 3)
            runs[estimator] = result
            print(f"{estimator:14s} {args.rows} rows in {result['seconds']:.0f}s = {result['rows_per_second']:,} "
                  f"rows/s; peak RSS {result['peak_rss_gib']:.2f} GiB = {result['rss_ratio_to_target']:.2f} x the "
                  f"{TARGET_GIB:g} GiB target")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {"benchmark": "importance_memory", "rows": args.rows, "days": args.days, "target_gib": TARGET_GIB,
              "texts_embedded": texts, "embed_seconds": round(embedded, 1), "runs": runs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["peak_rss_gib"] < TARGET_GIB for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
