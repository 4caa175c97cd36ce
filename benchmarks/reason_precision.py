"""How well the importance reasons name the noise: the default estimator's `reason` per row against the
simulator's truth (`noise_kind`), on one simulated day with the project's params.

    python benchmarks/reason_precision.py [--rows 50000] [--estimator noise_mixture] [--out benchmarks/results/reason_precision.json]

For each reason: its rows, and the share of them that carry each kind of injected noise, beside that
kind's share of the whole log (the precision a label picked at random would have). Runs the
`importance` command as the retrain does, with the base encoder's embeddings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DAY = "2026-11-01"


def pipeline(*args: str, cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"pipeline {args[0]} failed:\n{result.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--estimator", default=None, help="default: importance.estimator of params.yaml")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/reason_precision.json"))
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["simulate"]["impressions_per_day"] = args.rows
    estimator = args.estimator or params["importance"]["estimator"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        pipeline("simulate", "--start", DAY, "--params", "params.yaml", "--out", "raw", cwd=work)
        started = time.perf_counter()
        pipeline("importance", "--data", "raw", "--params", "params.yaml", "--estimator", estimator,
                 "--out", "scores", cwd=work)
        seconds = time.perf_counter() - started
        scores = pd.read_parquet(work / "scores/scores.parquet")
        truth = pd.read_parquet(work / f"raw/_truth/dt={DAY}/truth.parquet")
    rows = scores.merge(truth[["event_id", "noise_kind"]], on="event_id")
    base = rows["noise_kind"].value_counts(normalize=True).round(4).to_dict()
    reasons = {}
    for reason, group in rows.groupby("reason", observed=True):
        reasons[str(reason)] = {
            "rows": int(len(group)),
            "share_by_noise_kind": group["noise_kind"].value_counts(normalize=True).round(4).to_dict(),
            # recall: of each kind's rows in the log, the share this reason names
            "share_of_noise_kind_rows": (group["noise_kind"].value_counts() / rows["noise_kind"].value_counts())
            .dropna().round(4).to_dict()}
    result = {"estimator": estimator, "rows": int(len(rows)), "importance_seconds": round(seconds, 1),
              "noise_kind_share_of_log": base, "reasons": reasons,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{estimator} on {len(rows)} simulated rows ({seconds:.0f} s):")
    print(f"{'reason':<30} {'rows':>6}  share of its rows by injected noise (share in the whole log)")
    for reason, entry in sorted(reasons.items(), key=lambda kv: -kv[1]["rows"]):
        shares = ", ".join(f"{k} {v:.3f} ({base.get(k, 0):.3f})" for k, v in entry["share_by_noise_kind"].items())
        print(f"{reason:<30} {entry['rows']:>6}  {shares}")
        recall = ", ".join(f"{k} {v:.3f}" for k, v in entry["share_of_noise_kind_rows"].items())
        print(f"{'':<30} {'':>6}  share of each kind's rows given this reason: {recall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
