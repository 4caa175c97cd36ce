"""importance stage: score every impression of the day (or one shard of its sessions) with the chosen
estimator, or combine the shards' scores into weights, reasons and the report.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.importance.scores import SCORES_FILE, checked_scores, row_vectors, score_log, summarise, wants_vectors
from pipeline.params import load_params, stage_seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", action="append", default=None,
                        help="YYYY-MM-DD; repeat for several days (default: every day in --data)")
    parser.add_argument("--embeddings", default=None,
                        help="embeddings folder written by pretrain (default: embed with pretrain.base_model)")
    parser.add_argument("--estimator", default=None, help="estimator name (default: importance.estimator)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--selection", nargs="+", default=None, metavar="FILE",
                        help="run/estimator.json and/or run/weight_transform.json (written by repro): the "
                             "estimator and weight transform in them replace params'; --estimator still wins")
    parser.add_argument("--shard", default=None,
                        help="i/n: score only shard i of n (sessions split by a hash of their id; raw scores, "
                             "no weights); shardable estimators only")
    parser.add_argument("--combine", nargs="+", default=None, metavar="SHARD_DIR",
                        help="weight and report the scores of these shard folders (all n of them) instead of scoring")
    parser.add_argument("--out", required=True,
                        help="a folder (scores.parquet and metrics.json in it) or a .parquet file")


def run(data_dir: str | Path, days: list[str] | None, embeddings_dir: str | Path | None, out: str | Path,
        params: dict, estimator_name: str | None = None, shard=None,
        combine: list[str] | None = None) -> pd.DataFrame:
    """Score and weight the log; with `shard`, write that shard's raw scores only; with `combine`, weight
    the scores of every shard (read from those folders) instead of scoring."""
    from pipeline.importance import registry
    from pipeline.importance.reasons import evidence_columns, row_reasons
    from pipeline.importance.weights import explained_log_weights

    cfg = params["importance"]
    estimator = registry.get(estimator_name or cfg["estimator"])
    out = Path(out)
    if shard is not None and out.suffix == ".parquet":
        raise ValueError("--shard writes a folder (scores.parquet and shard.json): give --out a folder")
    vectors = None
    if combine:
        from pipeline.importance.sharding import read_shards
        from pipeline.model.dataset import load_log, read_log
        from pipeline.model.features import holdout_mask

        if wants_vectors(cfg):
            data = load_log(data_dir, days, embeddings_dir, params)
            impressions, catalog, vectors = data.impressions, data.catalog, row_vectors(data)
        else:
            impressions, catalog = read_log(data_dir, days)
        holdout = holdout_mask(impressions, params["split"]["holdout_fraction"])
        table = checked_scores(impressions["event_id"], read_shards(combine, estimator.name), estimator.name)
    else:
        impressions, catalog, holdout, table, vectors = score_log(data_dir, days, embeddings_dir, params,
                                                                  estimator, shard)
    if shard is not None:
        from pipeline.importance.sharding import write_shard

        with atomic_dir(out) as tmp:
            write_shard(tmp, table, estimator.name, shard, len(impressions))
        return table
    table["weight"], dropped = explained_log_weights(impressions, table["score"].to_numpy(), cfg, vectors,
                                                     stage_seed(params, "importance:clusters"))
    table["split"] = np.where(holdout, "holdout", "train")
    table["reason"] = row_reasons(table, dropped, estimator, float(cfg["report"]["low_weight"]),
                                  float(cfg["report"]["high_weight"]))
    # event_id, score, weight, split, reason, then the evidence the score comes from.
    table = table[["event_id", "score", "weight", "split", "reason", *evidence_columns(table)]]
    metrics = summarise(table, estimator.name, estimator.cost_class)
    if out.suffix == ".parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        table.to_parquet(tmp, index=False)
        tmp.replace(out)
    else:
        from pipeline.importance import report as importance_report

        with atomic_dir(out) as tmp:
            table.to_parquet(tmp / SCORES_FILE, index=False)
            write_json_atomic(tmp / "metrics.json", metrics)
            importance_report.write(tmp, table, impressions, catalog, estimator.name, cfg["report"])
    print(f"importance: {estimator.name}: weights p10={metrics['weight_quantiles']['p10']} "
          f"p90={metrics['weight_quantiles']['p90']}")
    return table


def main(args: argparse.Namespace) -> int:
    from pipeline.data.contract import ContractError
    from pipeline.days import parse_day
    from pipeline.importance.sharding import parse_shard

    try:
        days = [parse_day(d) for d in args.day] if args.day else None
        shard = parse_shard(args.shard) if args.shard else None
        if shard is not None and args.combine:
            raise ValueError("--shard and --combine exclude each other: score the shards, then combine them")
        params = load_params(args.params)
        if args.selection:
            from pipeline.atomic import read_json
            from pipeline.importance.selection import apply

            for path in args.selection:
                params = apply(params, read_json(path))
        run(args.data, days, args.embeddings, args.out, params, args.estimator, shard, args.combine)
    except (KeyError, ValueError, ContractError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"importance: {message}", file=sys.stderr)
        return 2
    return 0
