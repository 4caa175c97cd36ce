"""A log as the modelling stages see it: rows, features and the time split.

One day (the retrain) or several (the importance command on any folder in the contract's layout).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import embeddings, features
from pipeline.contract import ContractError, read_catalog, read_impressions_of_days


@dataclass
class DayData:
    impressions: pd.DataFrame
    catalog: pd.DataFrame
    x: features.Features
    holdout: np.ndarray  # bool per row: the held-out time slice

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(~self.holdout)

    @property
    def holdout_index(self) -> np.ndarray:
        return np.flatnonzero(self.holdout)


def days_in(data_dir: str | Path) -> list[str]:
    days = sorted(p.name[3:] for p in (Path(data_dir) / "impressions").glob("dt=*") if p.is_dir())
    if not days:
        raise ContractError(f"{data_dir}: no impressions/dt=YYYY-MM-DD folders")
    return days


def embed_with_base(texts: list[str], params: dict) -> embeddings.EmbeddingTable:
    """Embeddings from the base encoder in params, for a log that has no pretrain output."""
    from pipeline import encoder as enc
    from pipeline.compute import setup
    from pipeline.params import stage_seed

    cfg = params["pretrain"]
    device = setup(params, stage_seed(params, "embed"))
    tokenizer, model = enc.load_base(cfg["base_model"], cfg.get("tiny_bert", {}), stage_seed(params, "pretrain"))
    vectors = enc.embed(model.base_model, tokenizer, texts, cfg["max_length"], cfg["embed_batch_size"], device)
    return embeddings.EmbeddingTable(texts, vectors)


def uses_extra_features(params: dict) -> bool:
    """Whether the ranker reads the log's f_* columns (ranker.extra.features not empty)."""
    return bool((params["ranker"].get("extra") or {}).get("features", "auto"))


def read_log(data_dir: str | Path, days: list[str] | None,
             extra_features: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions, catalog) of `days` (default: every day in the folder), without features; with
    `extra_features`, the impressions keep their f_* columns."""
    days = days or days_in(data_dir)
    impressions = read_impressions_of_days(data_dir, days, extra_features)
    if impressions.empty:
        raise ValueError(f"{data_dir}: the log has no impressions for {', '.join(days)}")
    catalogs = [read_catalog(data_dir, day) for day in days]
    # The latest day's row wins for an item listed on several days.
    catalog = pd.concat(catalogs[::-1], ignore_index=True).drop_duplicates("item_id").reset_index(drop=True)
    return impressions, catalog


def load_log(data_dir: str | Path, days: list[str] | None, embeddings_dir: str | Path | None,
             params: dict) -> DayData:
    """Impressions of `days` (default: every day in the folder) with each day's catalog.

    Without `embeddings_dir` the texts are embedded with the base encoder named in params.
    """
    impressions, catalog = read_log(data_dir, days, uses_extra_features(params))
    table = text_embeddings(impressions, catalog, embeddings_dir, params)
    x = features.build(impressions, catalog, table, params["ranker"]["max_position"])
    return DayData(impressions, catalog, x, features.holdout_mask(impressions, params["split"]["holdout_fraction"]))


def text_embeddings(impressions: pd.DataFrame, catalog: pd.DataFrame, embeddings_dir: str | Path | None,
                    params: dict):
    """The embeddings folder's table, or the log's titles and queries embedded with the base encoder."""
    if embeddings_dir is not None:
        return embeddings.load(embeddings_dir)
    return embed_with_base(sorted(set(catalog["title"].dropna()) | set(impressions["query"].dropna())), params)


def load_day(data_dir: str | Path, day: str, embeddings_dir: str | Path, params: dict) -> DayData:
    return load_log(data_dir, [day], embeddings_dir, params)
