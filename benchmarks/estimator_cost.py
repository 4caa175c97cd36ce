"""Each importance estimator's wall time over the wall time of one training epoch on the same log,
both measured in this process (BENCHMARK_PROTOCOL.md's cost). Targets: forward-only at most 0.5,
per-sample-gradient estimators at most 2.

    python benchmarks/estimator_cost.py [--rows 50000] [--estimators all|a,b] [--out benchmarks/results/estimator_cost.json]

Simulates one day with the project's params (noise as configured), embeds its texts with the base
encoder from params, then times one epoch of the ranker and every estimator. Also prints each
estimator's detection AUROC against the simulator's truth file.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.model import ranker  # noqa: E402
from pipeline.compute import setup  # noqa: E402
from pipeline.data.contract import DayPaths  # noqa: E402
from pipeline.model.dataset import load_log  # noqa: E402
from pipeline.importance import registry  # noqa: E402

DAY = "2026-11-01"
TARGETS = {"forward-only": 0.5, "per-sample-gradients": 2.0}


def simulated_day(rows: int, params_file: str, params: dict):
    """One simulated day of `rows` impressions as the modelling stages see it (texts embedded with the
    base encoder of params), and the simulator's truth file (which rows are noise)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pipeline", "simulate", "--start", DAY, "--params", params_file,
                        "--impressions-per-day", str(rows), "--out", f"{tmp}/raw"], check=True, cwd=ROOT,
                       capture_output=True)
        data = load_log(f"{tmp}/raw", [DAY], None, params)
        truth = pd.read_parquet(DayPaths(Path(tmp) / "raw", DAY).truth_file)
    return data, truth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--estimators", default="all")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/estimator_cost.json"))
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    data, truth = simulated_day(args.rows, args.params, params)
    device = setup(params, 7)
    ctx = registry.Context(data, params, seed=7, device=device)
    train_x = data.x.subset(data.train_index)
    model = ranker.new_model(train_x.text_dim, params["ranker"], 7, train_x)
    ranker.fit(model, train_x, None, params["train"], 7, device, epochs=1)  # warm-up: first-call costs
    started = time.perf_counter()
    ranker.fit(model, train_x, None, params["train"], 8, device, epochs=1)
    epoch = time.perf_counter() - started
    names = sorted(registry.available()) if args.estimators == "all" else args.estimators.split(",")
    results = []
    print(f"one training epoch on {len(train_x)} rows: {epoch:.2f} s ({device}, {torch.get_num_threads()} threads)")
    print(f"{'estimator':20s} {'cost class':22s} {'seconds':>8s} {'ratio':>7s} {'target':>7s} {'AUROC':>6s}")
    for name in names:
        estimator = registry.get(name)
        started = time.perf_counter()
        scores = estimator.score(ctx)
        seconds = time.perf_counter() - started
        merged = scores.merge(truth, on="event_id")
        auroc = float(roc_auc_score(merged["is_noise"], -merged["score"]))
        target = TARGETS.get(estimator.cost_class)
        ratio = seconds / epoch
        results.append({"estimator": name, "cost_class": estimator.cost_class, "seconds": round(seconds, 3),
                        "ratio_to_epoch": round(ratio, 3), "target": target,
                        "within_target": None if target is None else ratio <= target,
                        "detection_auroc": round(auroc, 4)})
        print(f"{name:20s} {estimator.cost_class:22s} {seconds:8.2f} {ratio:7.2f} "
              f"{'-' if target is None else target:>7} {auroc:6.3f}")
    out = {"rows": len(data.impressions), "train_rows": len(train_x), "epoch_seconds": round(epoch, 3),
           "device": device, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "estimators": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
