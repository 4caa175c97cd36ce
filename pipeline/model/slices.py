"""Slices of the held-out rows that evaluate scores separately, as boolean masks by name.

  surface=search, surface=recommend   the request's surface
  category=Shoes, ...                 top level of the item's catalog category path; `(none)` without one
  query=head, query=tail              a query asked in at least `head_query_min_requests` requests of the
                                      day is head, any other query tail; rows without a query
                                      (recommendations) are in neither: surface=recommend covers them
  item=new                            items with no impression on any earlier day of the data folder
                                      (the last `new_item_history_days` of them when set, or the days a
                                      window file lists); not sliced at all when there is no earlier
                                      day, rather than calling every item new
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.contract import SURFACES, ContractError, DayPaths, days_on_disk, impression_parts

SLICINGS = ("surface", "category", "query_frequency", "new_item")
NO_CATEGORY = "(none)"


def top_category(items: pd.Series, catalog: pd.DataFrame) -> pd.Series:
    """Top level of each item's category path (`Shoes>Running>Men` -> `Shoes`), worked out per catalog
    item rather than per row."""
    categories = catalog.drop_duplicates("item_id").set_index("item_id")["category"]
    top = categories.str.split(">").str[0].str.strip()
    top = top.where(top.notna() & (top != ""), NO_CATEGORY)
    return items.map(top).fillna(NO_CATEGORY).reset_index(drop=True)


def query_requests(day_impressions: pd.DataFrame) -> pd.Series:
    """How many requests of the day asked each query."""
    return day_impressions.drop_duplicates("request_id").groupby("query")["request_id"].size()


def earlier_days(data_dir: str | Path, day: str, history_days: int | None) -> list[str]:
    days = [d for d in days_on_disk(data_dir) if d < day]
    return days[-history_days:] if history_days else days


def seen_items(data_dir: str | Path, days: list[str]) -> tuple[pd.Index, list[str]]:
    """Items with an impression on any of `days`, reading only the item_id column; and the days that
    could not be read (they count for nothing, and the output says so)."""
    uniques, unreadable = [], []
    for day in days:
        try:
            for part in impression_parts(DayPaths(Path(data_dir), day)):
                uniques.append(pc.unique(pq.read_table(part, columns=["item_id"]).column(0)))
        except (ContractError, OSError, pa.ArrowException):
            unreadable.append(day)
    if not uniques:
        return pd.Index([], dtype=object), unreadable
    combined = pc.unique(pa.chunked_array(uniques, type=pa.string()) if len(uniques) > 1 else uniques[0])
    return pd.Index(combined.to_pandas()), unreadable


def check_config(cfg: dict) -> None:
    if not isinstance(cfg.get("by"), list):
        raise ValueError(f"evaluate.slices.by must be a list of slicings ({', '.join(SLICINGS)}), "
                         f"got {cfg.get('by')!r}")
    unknown = [name for name in cfg["by"] if name not in SLICINGS]
    if unknown:
        raise ValueError(f"evaluate.slices.by: unknown slicing {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(SLICINGS)}")
    head_min = cfg.get("head_query_min_requests")
    if "query_frequency" in cfg["by"] and (isinstance(head_min, bool) or not isinstance(head_min, int)
                                           or head_min < 1):
        raise ValueError(f"evaluate.slices.head_query_min_requests must be a whole number >= 1, got {head_min!r}")
    history = cfg.get("new_item_history_days")
    if history is not None and (isinstance(history, bool) or not isinstance(history, int) or history < 1):
        raise ValueError(f"evaluate.slices.new_item_history_days must be null (every earlier day) or a whole "
                         f"number >= 1, got {history!r}")


def build(rows: pd.DataFrame, day_impressions: pd.DataFrame, catalog: pd.DataFrame, data_dir: str | Path,
          day: str, cfg: dict, history: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """(masks over `rows` by slice name, what each slicing did). `rows` are the held-out impressions;
    `day_impressions` the whole day, for how often each query was asked; `history` the earlier days
    that tell new items from seen ones (default: the data folder's, per new_item_history_days)."""
    check_config(cfg)
    masks: dict[str, np.ndarray] = {}
    notes: dict = {}
    if "surface" in cfg["by"]:
        surface = rows["surface"].to_numpy()
        for name in SURFACES:
            masks[f"surface={name}"] = surface == name
    if "category" in cfg["by"]:
        codes, names = pd.factorize(top_category(rows["item_id"], catalog), sort=True)
        for code, name in enumerate(names):
            masks[f"category={name}"] = codes == code
    if "query_frequency" in cfg["by"]:
        head_min = cfg["head_query_min_requests"]
        asked = rows["query"].map(query_requests(day_impressions)).to_numpy(dtype=np.float64, na_value=np.nan)
        has_query = rows["query"].notna().to_numpy()
        masks["query=head"] = has_query & (asked >= head_min)
        masks["query=tail"] = has_query & ~(asked >= head_min)
        notes["query_frequency"] = {
            "head_query_min_requests": head_min,
            "without_query": int((~has_query).sum()),
            "note": "rows without a query (recommendations) are in neither slice; surface=recommend covers them"}
    if "new_item" in cfg["by"]:
        days = earlier_days(data_dir, day, cfg.get("new_item_history_days")) if history is None else history
        seen, unreadable = seen_items(data_dir, days)
        read = [d for d in days if d not in unreadable]
        notes["new_item"] = {"history_days": read, "unreadable_days": unreadable}
        if read:
            masks["item=new"] = ~rows["item_id"].isin(seen).to_numpy()
        else:
            notes["new_item"]["note"] = ("no earlier day in the data folder to tell new items from: "
                                         "item=new not sliced")
    # A slice with no held-out row has nothing to score.
    return {name: mask for name, mask in masks.items() if mask.any()}, notes
