"""Trivial rankers that evaluate scores beside the candidate and the champion on the same rows, and the
true relevance a simulated log carries.

A trained ranker is only worth promoting if it orders items better than these:

  random          a seeded uniform score: what ordering by nothing gets
  logging_order   the logged position (first shown first): the policy that produced the log
  popularity      the item's click rate in the day's training rows (the rows not held out), shrunk
                  toward the day's overall rate with a prior of `popularity_prior` impressions, so an
                  item shown twice and clicked once is not called the best; unseen items get the
                  overall rate (and tie, broken at random)
  encoder_cosine  the zero-shot text encoder: cosine of the query and the title embeddings (dense
                  feature query_title_cosine). Search only: a recommendation has no query, so the
                  baseline is scored on the search rows and nowhere else
  lexical_overlap the share of the query's character trigrams found in the title (dense feature
                  query_title_overlap, pipeline/model/lexical.py): exact word matching. Search only

Every function returns one score per held-out row, higher = ranked first (None for a baseline that
does not apply to these rows).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.data.contract import DayPaths

NAMES = ("random", "logging_order", "popularity", "encoder_cosine", "lexical_overlap")
COSINE_FEATURE = "query_title_cosine"
OVERLAP_FEATURE = "query_title_overlap"


def random_scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def logging_scores(position) -> np.ndarray:
    return -np.asarray(position, dtype=np.float64)


def popularity_scores(train: pd.DataFrame, held_out_items: pd.Series, prior: float) -> np.ndarray:
    """Shrunk click rate of each held-out row's item in `train` (clicks + prior x rate) / (rows + prior)."""
    if len(train) == 0:
        return np.zeros(len(held_out_items))
    overall = float(train["clicked"].mean())
    per_item = train.groupby("item_id")["clicked"].agg(["sum", "size"])
    rate = (per_item["sum"] + prior * overall) / (per_item["size"] + prior)
    return held_out_items.map(rate).fillna(overall).to_numpy(dtype=np.float64)


def cosine_scores(dense: np.ndarray, dense_names) -> np.ndarray:
    """The query-title cosine column of the held-out rows' dense features."""
    return feature_scores(dense, dense_names, COSINE_FEATURE)


def feature_scores(dense: np.ndarray, dense_names, name: str) -> np.ndarray:
    """One column of the held-out rows' dense features, as scores."""
    return np.asarray(dense[:, list(dense_names).index(name)], dtype=np.float64)


def read_truth(data_dir: str | Path, day: str) -> pd.DataFrame | None:
    """The simulator's truth table of the day (event_id, relevance), or None for a log without one."""
    path = DayPaths(Path(data_dir), day).truth_file
    if not path.is_file():
        return None
    table = pq.read_table(path, columns=["event_id", "relevance"]).to_pandas()
    if table["event_id"].duplicated().any():
        raise ValueError(f"{path}: an event_id appears more than once")
    return table


def true_relevance(impressions: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Relevance of each row by event_id, NaN for an event the truth table does not list."""
    return impressions["event_id"].map(truth.set_index("event_id")["relevance"]).to_numpy(dtype=np.float64)
