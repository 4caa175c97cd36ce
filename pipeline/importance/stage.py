"""importance stage: score every impression of the day with the chosen estimator, then weight it."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.params import load_params, stage_seed

SCORES_FILE = "scores.parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--embeddings", required=True, help="embeddings folder written by pretrain")
    parser.add_argument("--estimator", default=None, help="estimator name (default: importance.estimator)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: scores.parquet, metrics.json")


def summarise(table: pd.DataFrame, estimator: str, cost_class: str) -> dict:
    """Deterministic facts only (no timings), so a rerun writes byte-identical metrics."""
    w = table["weight"].to_numpy()
    q = np.quantile(w, [0.01, 0.1, 0.5, 0.9, 0.99]) if len(w) else [None] * 5
    return {
        "estimator": estimator,
        "cost_class": cost_class,
        "events": int(len(table)),
        "weight_mean": round(float(w.mean()), 6) if len(w) else None,
        "weight_quantiles": dict(zip(["p01", "p10", "p50", "p90", "p99"], [round(float(v), 6) for v in q])),
    }


def run(data_dir: str | Path, day: str, embeddings_dir: str | Path, out_dir: str | Path, params: dict,
        estimator_name: str | None = None) -> pd.DataFrame:
    from pipeline.compute import setup
    from pipeline.dataset import load_day
    from pipeline.importance import registry
    from pipeline.importance.weights import to_weights

    cfg = params["importance"]
    estimator = registry.get(estimator_name or cfg["estimator"])
    seed = stage_seed(params, f"importance:{estimator.name}")
    device = setup(params, seed)
    data = load_day(data_dir, day, embeddings_dir, params)
    started = time.perf_counter()
    scores = estimator.score(registry.Context(data, params, seed, device))
    seconds = time.perf_counter() - started
    table = data.impressions[["event_id"]].merge(scores, on="event_id", how="left", validate="one_to_one")
    if table["score"].isna().any():
        missing = table.loc[table["score"].isna(), "event_id"]
        raise RuntimeError(f"estimator {estimator.name!r} left {len(missing)} events unscored, "
                           f"e.g. {missing.iloc[0]}")
    groups = data.impressions[cfg["balance_by"]].to_numpy() if cfg.get("balance_by") else None
    table["weight"] = to_weights(table["score"].to_numpy(), cfg["temperature"], tuple(cfg["clip"]), groups)
    table["split"] = np.where(data.holdout, "holdout", "train")
    metrics = summarise(table, estimator.name, estimator.cost_class)
    with atomic_dir(out_dir) as tmp:
        table.to_parquet(tmp / SCORES_FILE, index=False)
        write_json_atomic(tmp / "metrics.json", metrics)
    print(f"importance: {day} {estimator.name} scored {len(table)} events in {seconds:.1f}s; "
          f"weights p10={metrics['weight_quantiles']['p10']} p90={metrics['weight_quantiles']['p90']}")
    return table


def main(args: argparse.Namespace) -> int:
    run(args.data, args.day, args.embeddings, args.out, load_params(args.params), args.estimator)
    return 0
