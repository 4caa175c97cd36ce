"""importance stage: score every impression of the day with the chosen estimator, then weight it.

In shards: `--shard i/n` runs scores one shard's rows (raw scores only), then `--combine` over the n
shard folders checks that they cover the log exactly and weights and reports the whole, as one
unsharded run would."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from pipeline.params import stage_seed

SCORES_FILE = "scores.parquet"


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
    from pipeline.data.contract import same_event_ids
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
    from pipeline.importance import registry
    from pipeline.importance.sharding import shard_rows
    from pipeline.model.dataset import load_log

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
