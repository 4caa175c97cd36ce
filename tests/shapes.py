"""Shapes real logs take (issue 19), made from a simulated day: each a transform of its tables.

`write_shape(raw, shape, day)` rewrites one simulated day of `raw` (the contract's layout) in the named
shape and removes its truth file (real logs have none). Columns a real export leaves empty are written
as Arrow's null type where they hold text, as null floats where they hold numbers.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CLICKS_FEW = 4          # "a handful of clicks"
LOW_CTR = 0.003         # a 0.3 % click-through rate
FEW_REQUESTS = 6
LIST_LENGTH = 100
CATALOG_ITEMS = 100_000  # "a catalog of 100 k items of which a few thousand are shown"


def _null_text(frame: pd.DataFrame, column: str) -> None:
    frame[column] = pd.Series([None] * len(frame), dtype=object, index=frame.index)


def _null_number(frame: pd.DataFrame, column: str) -> None:
    frame[column] = np.nan


def _keep_clicks(imp: pd.DataFrame, count: int, seed: int = 0) -> pd.DataFrame:
    """Only `count` seeded clicks stay (their purchases with them)."""
    clicked = np.flatnonzero(imp["clicked"].to_numpy() == 1)
    keep = np.random.default_rng(seed).choice(clicked, size=min(count, len(clicked)), replace=False)
    mask = np.zeros(len(imp), bool)
    mask[keep] = True
    imp["clicked"] = np.where(mask, imp["clicked"], 0)
    imp["purchased"] = np.where(mask, imp["purchased"], 0)
    return imp


def _one_item_per_request(imp: pd.DataFrame) -> pd.DataFrame:
    imp["request_id"] = "r-" + imp["event_id"].astype(str)
    imp["position"] = 1
    return imp


def _few_requests(imp: pd.DataFrame) -> pd.DataFrame:
    keep = pd.unique(imp["request_id"])[:FEW_REQUESTS]
    return imp[imp["request_id"].isin(keep)]


def _long_lists(imp: pd.DataFrame) -> pd.DataFrame:
    """Consecutive rows regrouped into lists of LIST_LENGTH, each taking its first row's context."""
    imp = imp.sort_values(["ts", "request_id", "position"]).reset_index(drop=True)
    group = np.arange(len(imp)) // LIST_LENGTH
    first = imp.groupby(group).transform("first")
    for column in ("ts", "user_id", "session_id", "surface", "query"):
        imp[column] = first[column]
    imp.loc[imp["surface"] == "recommend", "query"] = None  # "first" skips nulls: a later row's query
    imp["request_id"] = [f"r-long-{g:05d}" for g in group]
    imp["position"] = np.arange(len(imp)) % LIST_LENGTH + 1
    return imp


def _retitle(catalog: pd.DataFrame, imp: pd.DataFrame, text) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Titles and queries through the same text map, so queries still match the titles they matched."""
    catalog["title"] = [text(t, i) for i, t in enumerate(catalog["title"])]
    searched = imp["query"].notna()
    imp.loc[searched, "query"] = [text(q, -1) for q in imp.loc[searched, "query"]]
    return catalog, imp


def _script(start: int):
    """Latin letters onto a block of another script (CJK ideographs, Arabic letters), case-folded."""
    def text(value: str, _: int) -> str:
        return "".join(chr(start + ord(c) - ord("a")) if "a" <= c <= "z" else c for c in value.lower())
    return text


def _long(value: str, index: int) -> str:
    """A 500-character title (the title repeated, then a unique tail); queries stay as they are."""
    return value if index < 0 else ((value + " ") * 40)[:493] + f" #{index:05d}"


def _emoji(value: str, index: int) -> str:
    marks = "\U0001F45F\U0001F9E6\u2764\ufe0f\U0001F525\U0001F1EF\U0001F1F5"
    return f"{marks[index % 3]} {value} {marks[3:]}" if index >= 0 else value


def _large_catalog(catalog: pd.DataFrame) -> pd.DataFrame:
    """The catalog padded to CATALOG_ITEMS with items never shown: the shown ones' fields recombined
    under new ids and numbered titles, so every added title is a distinct text."""
    extra = CATALOG_ITEMS - len(catalog)
    rng = np.random.default_rng(0)
    padding = catalog.iloc[rng.integers(0, len(catalog), size=extra)].reset_index(drop=True)
    padding["item_id"] = [f"unshown-{i:06d}" for i in range(extra)]
    padding["title"] = padding["title"].to_numpy() + pd.Series([f" no. {i}" for i in range(extra)]).to_numpy()
    return pd.concat([catalog, padding], ignore_index=True)


def _nulls(imp: pd.DataFrame, catalog: pd.DataFrame, columns: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    for column in columns:
        if column == "brand" or column == "category":
            _null_text(catalog, column)
        elif column == "price":
            _null_number(catalog, "price")
            _null_number(imp, "price")
        elif column == "propensity":
            _null_number(imp, "propensity")
        elif column == "f_*":
            for name in [c for c in imp.columns if c.startswith("f_")]:
                (_null_number if pd.api.types.is_numeric_dtype(imp[name]) else _null_text)(imp, name)
    return imp, catalog


OPTIONAL = ("brand", "category", "price", "propensity", "f_*")


def transform(shape: str, imp: pd.DataFrame, catalog: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The day's (impressions, catalog) in `shape`."""
    imp, catalog = imp.copy(), catalog.copy()
    if shape.startswith("null_"):
        name = shape[len("null_"):]
        return _nulls(imp, catalog, OPTIONAL if name == "all" else ("f_*" if name == "f" else name,))
    if shape == "recommend_only":
        imp = imp[imp["surface"] == "recommend"]
        _null_text(imp := imp.copy(), "query")
    elif shape == "search_only":
        imp = imp[imp["surface"] == "search"]
    elif shape == "no_purchases":
        imp["purchased"] = 0
    elif shape == "ctr_low":
        imp = _keep_clicks(imp, max(1, round(LOW_CTR * len(imp))))
    elif shape == "few_clicks":
        imp = _keep_clicks(imp, CLICKS_FEW)
    elif shape == "one_item_per_request":
        imp = _one_item_per_request(imp)
    elif shape == "shared_ts":  # every row of a session (so of each request) at the session's first time
        imp["ts"] = imp.groupby("session_id")["ts"].transform("min")
    elif shape == "minute_ts":
        imp["ts"] = imp["ts"].dt.floor("min")
    elif shape == "few_requests":
        imp = _few_requests(imp)
    elif shape == "long_lists":
        imp = _long_lists(imp)
    elif shape == "long_titles":
        catalog, imp = _retitle(catalog, imp, _long)
    elif shape == "cjk_titles":
        catalog, imp = _retitle(catalog, imp, _script(0x4E00))
    elif shape == "arabic_titles":
        catalog, imp = _retitle(catalog, imp, _script(0x0628))
    elif shape == "emoji_titles":
        catalog, imp = _retitle(catalog, imp, _emoji)
    elif shape == "large_catalog":
        catalog = _large_catalog(catalog)
    else:
        raise ValueError(f"unknown shape {shape}")
    return imp.reset_index(drop=True), catalog


SHAPES = tuple(f"null_{c}" for c in ("brand", "category", "price", "propensity", "f", "all")) + (
    "recommend_only", "search_only", "no_purchases", "ctr_low", "few_clicks", "one_item_per_request",
    "shared_ts", "minute_ts", "few_requests", "long_lists", "long_titles", "cjk_titles", "arabic_titles",
    "emoji_titles", "large_catalog")


def _table(frame: pd.DataFrame) -> pa.Table:
    """Object columns holding no value become Arrow's null type, as a real export writes them."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.replace_schema_metadata(None)


def write_shape(raw: Path, shape, day: str) -> None:
    """Rewrite `raw`'s simulated `day` in `shape` (a name of SHAPES, or a function of (impressions,
    catalog) returning both) and drop its truth file."""
    imp_dir, cat_file = raw / "impressions" / f"dt={day}", raw / "catalog" / f"dt={day}" / "catalog.parquet"
    imp = pd.concat([pd.read_parquet(p) for p in sorted(imp_dir.glob("*.parquet"))], ignore_index=True)
    reshape = shape if callable(shape) else (lambda i, c: transform(shape, i, c))
    imp, catalog = reshape(imp, pd.read_parquet(cat_file))
    shutil.rmtree(imp_dir)
    imp_dir.mkdir(parents=True)
    pq.write_table(_table(imp), imp_dir / "part-00000.parquet")
    pq.write_table(_table(catalog), cat_file)
    shutil.rmtree(raw / "_truth" / f"dt={day}", ignore_errors=True)
