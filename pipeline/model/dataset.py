"""A log as the modelling stages see it: rows, features and the time split.

One day (the retrain) or several (the importance command on any folder in the contract's layout).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from pipeline.data.contract import ContractError, days_on_disk, read_catalog, read_impressions_of_days
from pipeline.model import embeddings, features, history


class _HeldOut:
    holdout: np.ndarray  # bool per row: the held-out time slice

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(~self.holdout)

    @property
    def holdout_index(self) -> np.ndarray:
        return np.flatnonzero(self.holdout)


@dataclass
class DayData(_HeldOut):
    impressions: pd.DataFrame
    catalog: pd.DataFrame
    x: features.Features
    holdout: np.ndarray


@dataclass
class WindowData(_HeldOut):
    """A training window: its days' rows one after the other, their features still a part per day
    (features.take cuts the training slices out of them without a concatenated copy)."""
    impressions: pd.DataFrame
    catalog: pd.DataFrame
    parts: list[features.Features]
    holdout: np.ndarray


def days_in(data_dir: str | Path) -> list[str]:
    days = days_on_disk(data_dir)
    if not days:
        raise ContractError(f"{data_dir}: no impressions/dt=YYYY-MM-DD folders")
    return days


def embed_with_base(texts: list[str], params: dict) -> embeddings.EmbeddingTable:
    """Embeddings from the base encoder in params, for a log that has no pretrain output."""
    from pipeline.compute import setup
    from pipeline.model import encoder as enc
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


def concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames one below the other; a column categorical in all stays categorical (pd.concat would
    turn day-specific categories into one Python string per row)."""
    if len(frames) == 1:
        return frames[0]
    columns = {}
    for column in frames[0].columns:
        parts = [frame[column] for frame in frames]
        try:
            if all(isinstance(part.dtype, pd.CategoricalDtype) for part in parts):
                columns[column] = union_categoricals(parts)
                continue
        except TypeError:  # categories of different dtypes (an all-null day's, say): plain values instead
            pass
        columns[column] = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(columns)


def earlier_rows(data_dir: str | Path, days: list[str], params: dict) -> pd.DataFrame:
    """The impressions (history.COLUMNS) of the ranker.history.days days on disk before `days`: what
    users and items did before, for the history features. A day that cannot be read is left out."""
    wanted = int((params["ranker"].get("history") or {}).get("days", 0))
    earlier = [d for d in days_in(data_dir) if d < min(days)][-wanted:] if wanted > 0 else []
    frames = []
    for day in earlier:
        try:
            frames.append(read_impressions_of_days(data_dir, [day], columns=history.COLUMNS))
        except (ContractError, OSError, ValueError, KeyError):
            continue  # a day that failed its checks (or was never landed whole) tells nothing reliable
    return concat_frames(frames) if frames else pd.DataFrame(columns=list(history.COLUMNS))


def logged_history(data_dir: str | Path, days: list[str], impressions: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Earlier days' impressions and the log's own: every row an impression's history features may read."""
    own = history.history_rows(impressions)
    before = earlier_rows(data_dir, days, params)
    if before.empty:
        return own
    return concat_frames([before, own])


def build_features(impressions: pd.DataFrame, catalog: pd.DataFrame, table, params: dict,
                   logged: pd.DataFrame | None) -> features.Features:
    cfg = params["ranker"]
    knobs = cfg.get("history") or {}
    return features.build(impressions, catalog, table, cfg["max_position"], history=logged,
                          recent_clicks=int(knobs.get("recent_clicks", 10)),
                          item_prior=float(knobs.get("item_prior", 5.0)))


def load_log(data_dir: str | Path, days: list[str] | None, embeddings_dir: str | Path | None,
             params: dict) -> DayData:
    """Impressions of `days` (default: every day in the folder) with each day's catalog.

    Without `embeddings_dir` the texts are embedded with the base encoder named in params.
    """
    days = days or days_in(data_dir)
    impressions, catalog = read_log(data_dir, days, uses_extra_features(params))
    table = text_embeddings(impressions, catalog, embeddings_dir, params)
    x = build_features(impressions, catalog, table, params, logged_history(data_dir, days, impressions, params))
    return DayData(impressions, catalog, x, features.holdout_mask(impressions, params["split"]["holdout_fraction"]))


def text_embeddings(impressions: pd.DataFrame, catalog: pd.DataFrame, embeddings_dir: str | Path | None,
                    params: dict):
    """The embeddings folder's table, or the log's titles and queries embedded with the base encoder."""
    if embeddings_dir is not None:
        return embeddings.load(embeddings_dir)
    return embed_with_base(sorted(set(catalog["title"].dropna()) | set(impressions["query"].dropna())), params)


def load_day(data_dir: str | Path, day: str, embeddings_dir: str | Path, params: dict) -> DayData:
    return load_log(data_dir, [day], embeddings_dir, params)


# What train reads of a window's impressions once the features are built: the weights' key, the time
# split and each row's day. The other columns (texts, ids, labels) live on in the features.
WINDOW_COLUMNS = ("event_id", "request_id", "ts")


def load_window(data_dir: str | Path, days: list[str], embeddings_dir: str | Path, params: dict) -> WindowData:
    """The training window's days (oldest first), each read and built on its own exactly as `load_day`
    builds it (its history features read the ranker.history.days before it, as they will when the day is
    evaluated or served), one after the other; the held-out slice is the last day's. Day by day, keeping
    of each day's impressions only WINDOW_COLUMNS and a `day` column: the peak holds one day's full frames
    beside the window's features."""
    table = embeddings.load(embeddings_dir)
    frames, catalogs, parts, holdout = [], [], [], []
    for k, day in enumerate(days):
        impressions, catalog = read_log(data_dir, [day], uses_extra_features(params))
        parts.append(build_features(impressions, catalog, table, params,
                                    logged_history(data_dir, [day], impressions, params)))
        holdout.append(features.holdout_mask(impressions, params["split"]["holdout_fraction"]) if day == days[-1]
                       else np.zeros(len(impressions), dtype=bool))
        codes = np.full(len(impressions), k, dtype=np.int16)
        frames.append(impressions[list(WINDOW_COLUMNS)].assign(day=pd.Categorical.from_codes(codes, days)))
        catalogs.append(catalog)
        del impressions
    catalog = pd.concat(catalogs[::-1], ignore_index=True).drop_duplicates("item_id").reset_index(drop=True)
    return WindowData(concat_frames(frames), catalog, parts, np.concatenate(holdout))
