"""importance stage: score every impression of the day with the chosen estimator, then weight it."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.params import load_params, stage_seed

SCORES_FILE = "scores.parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", action="append", default=None,
                        help="YYYY-MM-DD; repeat for several days (default: every day in --data)")
    parser.add_argument("--embeddings", default=None,
                        help="embeddings folder written by pretrain (default: embed with pretrain.base_model)")
    parser.add_argument("--estimator", default=None, help="estimator name (default: importance.estimator)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True,
                        help="a folder (scores.parquet and metrics.json in it) or a .parquet file")


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


def run(data_dir: str | Path, days: list[str] | None, embeddings_dir: str | Path | None, out: str | Path,
        params: dict, estimator_name: str | None = None) -> pd.DataFrame:
    from pipeline.compute import setup
    from pipeline.dataset import load_log
    from pipeline.importance import registry
    from pipeline.importance.weights import transform

    cfg = params["importance"]
    estimator = registry.get(estimator_name or cfg["estimator"])
    seed = stage_seed(params, f"importance:{estimator.name}")
    device = setup(params, seed)
    data = load_log(data_dir, days, embeddings_dir, params)
    if data.impressions["clicked"].nunique() < 2:
        raise ValueError(f"{data_dir}: every impression has clicked={int(data.impressions['clicked'].iloc[0])}; "
                         "importance needs both clicked and unclicked impressions")
    started = time.perf_counter()
    scores = estimator.score(registry.Context(data, params, seed, device))
    seconds = time.perf_counter() - started
    table = data.impressions[["event_id"]].merge(scores, on="event_id", how="left", validate="one_to_one")
    if table["score"].isna().any() or not np.isfinite(table["score"]).all():
        bad = table.loc[~np.isfinite(table["score"].fillna(np.nan)), "event_id"]
        raise RuntimeError(f"estimator {estimator.name!r} left {len(bad)} events without a finite score, "
                           f"e.g. {bad.iloc[0]}")
    groups = data.impressions[cfg["balance_by"]].to_numpy() if cfg.get("balance_by") else None
    table["weight"] = transform(table["score"].to_numpy(), cfg, groups, data.impressions["session_id"].to_numpy())
    table["split"] = np.where(data.holdout, "holdout", "train")
    metrics = summarise(table, estimator.name, estimator.cost_class)
    out = Path(out)
    if out.suffix == ".parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        table.to_parquet(tmp, index=False)
        tmp.replace(out)
    else:
        from pipeline import importance_report

        with atomic_dir(out) as tmp:
            table.to_parquet(tmp / SCORES_FILE, index=False)
            write_json_atomic(tmp / "metrics.json", metrics)
            importance_report.write(tmp, table, data.impressions, data.catalog, estimator.name, cfg["report"])
    print(f"importance: {estimator.name} scored {len(table)} events in {seconds:.1f}s; "
          f"weights p10={metrics['weight_quantiles']['p10']} p90={metrics['weight_quantiles']['p90']}")
    return table


def main(args: argparse.Namespace) -> int:
    from pipeline.contract import ContractError
    from pipeline.days import parse_day

    try:
        days = [parse_day(d) for d in args.day] if args.day else None
        run(args.data, days, args.embeddings, args.out, load_params(args.params), args.estimator)
    except (KeyError, ValueError, ContractError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"importance: {message}", file=sys.stderr)
        return 2
    return 0
