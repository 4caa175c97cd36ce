"""importance stage: score every impression of the day with the chosen estimator, then weight it.

In shards: `--shard i/n` runs scores one shard's rows (raw scores only), then `--combine` over the n
shard folders checks that they cover the log exactly and weights and reports the whole, as one
unsharded run would."""
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


def checked_scores(event_ids: pd.Series, scores: pd.DataFrame, estimator: str) -> pd.DataFrame:
    """The scores (and evidence columns) in the order of `event_ids`: exactly one finite score for each
    of them, no others."""
    from pipeline.contract import same_event_ids
    from pipeline.importance.reasons import evidence_columns

    scores = scores[["event_id", "score", *evidence_columns(scores)]]
    if same_event_ids(scores["event_id"], event_ids):
        table = scores.reset_index(drop=True)  # already in log order: no join
    else:
        table = event_ids.to_frame().merge(scores, on="event_id", how="left", validate="one_to_one")
        extra = scores.loc[~scores["event_id"].isin(event_ids), "event_id"]
        if len(extra):
            raise ValueError(f"{len(extra)} scored events are not in the log, e.g. {extra.iloc[0]}: "
                             "the scores come from another log")
    bad = table.loc[~np.isfinite(table["score"].astype(float).fillna(np.nan)), "event_id"]
    if len(bad):
        raise RuntimeError(f"estimator {estimator!r} left {len(bad)} events without a finite score, "
                           f"e.g. {bad.iloc[0]}")
    return table


def wants_vectors(cfg: dict) -> bool:
    return bool((cfg.get("cluster_representatives") or {}).get("clusters"))


def row_vectors(data) -> np.ndarray:
    """What the cluster-representatives rule clusters: each row's query and title embeddings."""
    return np.hstack([data.x.query.numpy(), data.x.title.numpy()])


def score_log(data_dir, days, embeddings_dir, params: dict, estimator, shard):
    """Run the estimator on the log (or one shard of it): (impressions, catalog, holdout, scores, vectors)."""
    from pipeline.compute import setup
    from pipeline.dataset import load_log
    from pipeline.importance import registry
    from pipeline.importance.sharding import shard_rows

    if shard is not None and not estimator.shardable:
        shardable = sorted(name for name, e in registry.available().items() if e.shardable)
        raise ValueError(f"estimator {estimator.name!r} does not score rows independently, so it cannot run "
                         f"in shards; shardable: {', '.join(shardable)}")
    seed = stage_seed(params, f"importance:{estimator.name}")
    device = setup(params, seed)
    data = load_log(data_dir, days, embeddings_dir, params)
    if data.impressions["clicked"].nunique() < 2:
        raise ValueError(f"{data_dir}: every impression has clicked={int(data.impressions['clicked'].iloc[0])}; "
                         "importance needs both clicked and unclicked impressions")
    rows = None if shard is None else shard_rows(data.impressions["session_id"], shard)
    started = time.perf_counter()
    scores = estimator.score(registry.Context(data, params, seed, device, rows))
    print(f"importance: {estimator.name} scored {len(scores)} events in {time.perf_counter() - started:.1f}s"
          + ("" if shard is None else f" (shard {shard})"))
    event_ids = data.impressions["event_id"] if rows is None else data.impressions["event_id"].iloc[rows]
    # A shard's scores are weighted later, by the combine: only a whole run prunes by cluster.
    vectors = row_vectors(data) if shard is None and wants_vectors(params["importance"]) else None
    return data.impressions, data.catalog, data.holdout, checked_scores(event_ids, scores, estimator.name), vectors


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
        from pipeline.dataset import load_log, read_log
        from pipeline.features import holdout_mask
        from pipeline.importance.sharding import read_shards

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
        from pipeline import importance_report

        with atomic_dir(out) as tmp:
            table.to_parquet(tmp / SCORES_FILE, index=False)
            write_json_atomic(tmp / "metrics.json", metrics)
            importance_report.write(tmp, table, impressions, catalog, estimator.name, cfg["report"])
    print(f"importance: {estimator.name}: weights p10={metrics['weight_quantiles']['p10']} "
          f"p90={metrics['weight_quantiles']['p90']}")
    return table


def main(args: argparse.Namespace) -> int:
    from pipeline.contract import ContractError
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
            from pipeline.selection import apply

            for path in args.selection:
                params = apply(params, read_json(path))
        run(args.data, days, args.embeddings, args.out, params, args.estimator, shard, args.combine)
    except (KeyError, ValueError, ContractError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"importance: {message}", file=sys.stderr)
        return 2
    return 0
