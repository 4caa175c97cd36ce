"""From a day's impressions to model inputs: the time split and the feature tensors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.data.contract import EXTRA_FEATURE_PREFIX
from pipeline.model import history as past
from pipeline.model import lexical
from pipeline.model.embeddings import EmbeddingTable

# Rankers read the first dense_dim of these (a model saved before the history features reads 4, one
# saved before the lexical match 10): new features go at the end.
DENSE_FEATURES = ("query_title_cosine", "log_price", "price_missing", "is_search", *past.FEATURES,
                  "query_title_overlap")
# Learned embeddings per value, looked up by hash bucket: an item, category or brand first seen at
# serving time still gets a row (shared with whatever hashes beside it) instead of failing.
# The rows hold model-independent hashes; each ranker folds them into its own number of buckets.
ID_FEATURES = ("item_id", "category", "brand")


def holdout_mask(impressions: pd.DataFrame, holdout_fraction: float) -> np.ndarray:
    """True for rows of the day's last requests by time: the evaluation slice. A request that starts at
    the same time as the first held-out one is held out too, so every held-out request starts strictly
    after every other (train drops the few rows of a longer request that reach into the slice)."""
    first_ts = impressions.groupby("request_id", sort=False)["ts"].min()
    order = first_ts.sort_values(kind="stable")
    n_holdout = int(round(len(order) * holdout_fraction))
    if not n_holdout:
        return np.zeros(len(impressions), dtype=bool)
    held = order.index[order.to_numpy() >= order.iloc[len(order) - n_holdout]]
    return impressions["request_id"].isin(held).to_numpy()


class Features:
    """Model inputs for n rows. The query and title embeddings are held either as (n, d) tensors or, as
    `build` makes them, as (n,) indices into `texts` (one row per unique text plus a zero row): a 10M-row
    log then holds two integers per row instead of 2 x d floats, and `.query`/`.title` gather the vectors
    of the rows asked for (train and score batch by batch to keep that small)."""

    def __init__(self, query: torch.Tensor, title: torch.Tensor, dense: torch.Tensor, position: torch.Tensor,
                 click: torch.Tensor, purchase: torch.Tensor, texts: torch.Tensor | None = None,
                 ids: torch.Tensor | None = None, numeric: torch.Tensor | None = None,
                 categorical: torch.Tensor | None = None, numeric_names: tuple[str, ...] = (),
                 categorical_names: tuple[str, ...] = (), states=None):
        n = len(click)
        self._query, self._title = query, title  # (n, d) vectors, or (n,) indices into texts
        self.dense = dense          # (n, len(DENSE_FEATURES))
        # (n, len(ID_FEATURES)) int32 hashes (features.hash_values); 0 (unknown) for rows built without them
        self.ids = torch.zeros((n, len(ID_FEATURES)), dtype=torch.int32) if ids is None else ids
        # The log's f_* columns: numeric ones as float32 (NaN where missing), the others hashed like ids.
        self.numeric = torch.zeros((n, 0)) if numeric is None else numeric
        self.categorical = torch.zeros((n, 0), dtype=torch.int32) if categorical is None else categorical
        self.numeric_names, self.categorical_names = tuple(numeric_names), tuple(categorical_names)
        self.position = position    # (n,) long, clipped to max_position
        self.click = click          # (n,) float
        self.purchase = purchase    # (n,) float
        self.texts = texts          # (unique texts + 1, d) or None
        # text_tower.TextStates in the order of `texts`, for a ranker that tunes the encoder's top layers
        self.states = states

    @property
    def query(self) -> torch.Tensor:
        """(n, d) query embeddings, zeros where there is no query."""
        return self._query if self.texts is None else self.texts[self._query]

    @property
    def title(self) -> torch.Tensor:
        return self._title if self.texts is None else self.texts[self._title]

    @property
    def text_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, title) rows in the text table, for rows built by `build`."""
        if self.texts is None:
            raise ValueError("these rows hold their text vectors, not indices into a table")
        return self._query, self._title

    @property
    def text_dim(self) -> int:
        return int((self._query if self.texts is None else self.texts).shape[1])

    def numeric_columns(self, names) -> torch.Tensor:
        """(n, len(names)) of the named numeric f_* columns; NaN for a column these rows do not have."""
        return torch.stack([self.numeric[:, self.numeric_names.index(name)] if name in self.numeric_names
                            else torch.full((len(self),), float("nan"), device=self.numeric.device)
                            for name in names], dim=1)

    def categorical_columns(self, names) -> torch.Tensor:
        """(n, len(names)) hashes of the named categorical f_* columns; 0 (unknown) for a missing column."""
        return torch.stack([self.categorical[:, self.categorical_names.index(name)] if name in self.categorical_names
                            else torch.zeros(len(self), dtype=torch.int32, device=self.categorical.device)
                            for name in names], dim=1)

    def _extras(self, op) -> dict:
        """Keyword arguments for a Features holding op(tensor) of each per-row column besides _columns."""
        return {"ids": op(self.ids), "numeric": op(self.numeric), "categorical": op(self.categorical),
                "numeric_names": self.numeric_names, "categorical_names": self.categorical_names,
                "states": self.states}

    def with_texts(self, texts: torch.Tensor) -> "Features":
        """The same rows gathering their text vectors from `texts` (same rows, other vectors: for
        example projected ones); only for rows that hold text indices."""
        if self.texts is None:
            raise ValueError("with_texts: these rows hold their text vectors, not indices into a table")
        return Features(*self._columns(), texts=texts, **self._extras(lambda t: t))

    def __len__(self) -> int:
        return len(self.click)

    def _columns(self) -> tuple[torch.Tensor, ...]:
        return self._query, self._title, self.dense, self.position, self.click, self.purchase

    def subset(self, index) -> "Features":
        index = torch.as_tensor(index)
        return Features(*(column[index] for column in self._columns()), texts=self.texts,
                        **self._extras(lambda t: t[index]))

    def to(self, device: str, non_blocking: bool = False) -> "Features":
        texts = None if self.texts is None else self.texts.to(device, non_blocking=non_blocking)
        moved = Features(*(column.to(device, non_blocking=non_blocking) for column in self._columns()), texts=texts,
                         **self._extras(lambda t: t.to(device, non_blocking=non_blocking)))
        moved.states = None if self.states is None else self.states.to(device, non_blocking=non_blocking)
        return moved

    def gathered(self) -> "Features":
        """The same rows holding their own text vectors (no shared table): what a DataLoader worker
        hands over, so that pinning and copying a batch moves only the batch."""
        if self.states is not None:
            raise ValueError("a ranker tuning the encoder's top layers needs the rows' text indices: "
                             "train.loader_workers must be 0 with ranker.encoder.tune_top_layers")
        return Features(self.query, self.title, self.dense, self.position, self.click, self.purchase,
                        **self._extras(lambda t: t))

    def pin_memory(self) -> "Features":
        """Page-locked copies, for DataLoader(pin_memory=True) and non-blocking copies to the GPU."""
        texts = None if self.texts is None else self.texts.pin_memory()
        return Features(*(column.pin_memory() for column in self._columns()), texts=texts,
                        **self._extras(lambda t: t.pin_memory()))


def _check_parts(parts: list[Features]) -> None:
    """Parts that can be laid one after the other: built by `build` against one text table, same f_* columns."""
    first = parts[0]
    for part in parts[1:]:
        if (part.numeric_names, part.categorical_names) != (first.numeric_names, first.categorical_names):
            raise ValueError(f"the days' f_* feature columns differ: {list(first.numeric_names + first.categorical_names)} "
                             f"vs {list(part.numeric_names + part.categorical_names)}")
        if part.texts is None or first.texts is None or part.texts.shape != first.texts.shape:
            raise ValueError("the parts were not built against one text table")


def _all_columns(x: Features) -> list[torch.Tensor]:
    return [*x._columns(), x.ids, x.numeric, x.categorical]


def take(parts: list[Features], indices: list) -> list[Features]:
    """For each index array (rows of the parts laid one after the other), those rows as one Features:
    the rows of the parts' concatenation, without ever holding the concatenation.
    Empties `parts` as it goes: each part is freed once its rows are copied out, and the outputs start
    untouched (torch.empty), so the peak is the parts plus one part's share of the outputs, not the two
    whole copies of concat-then-subset."""
    _check_parts(parts)
    texts, states = parts[0].texts, parts[0].states
    names = {"numeric_names": parts[0].numeric_names, "categorical_names": parts[0].categorical_names}
    bounds = np.cumsum([0] + [len(part) for part in parts])
    indices = [np.asarray(index, dtype=np.int64) for index in indices]
    for index in indices:
        if index.size and (index.min() < 0 or index.max() >= bounds[-1]):
            raise ValueError(f"take: a row index outside the parts' {bounds[-1]} rows")
    outs = [[torch.empty((len(index), *column.shape[1:]), dtype=column.dtype) for column in _all_columns(parts[0])]
            for index in indices]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = parts.pop(0)  # the caller's list lets go of it too: freed at the end of this turn
        for index, out in zip(indices, outs):
            at = np.flatnonzero((index >= lo) & (index < hi))
            if at.size:
                source, target = torch.from_numpy(index[at] - lo), torch.from_numpy(at)
                for column, into in zip(_all_columns(part), out):
                    into[target] = column[source]
        del part
    return [Features(*out[:6], texts=texts, ids=out[6], numeric=out[7], categorical=out[8], states=states, **names)
            for out in outs]


def item_titles(impressions: pd.DataFrame, catalog: pd.DataFrame) -> list[str]:
    titles = catalog.drop_duplicates("item_id").set_index("item_id")["title"]
    return impressions["item_id"].map(titles).tolist()


def title_indices(impressions: pd.DataFrame, catalog: pd.DataFrame, table: EmbeddingTable,
                  missing: int) -> np.ndarray:
    """Row of each impression's item title in `table`, through the catalog's rows (no per-row strings);
    `missing` for an item without a title."""
    items = catalog.drop_duplicates("item_id").reset_index(drop=True)
    item_row = pd.Index(items["item_id"]).get_indexer(impressions["item_id"])
    shown = np.unique(item_row[item_row >= 0])  # items never shown need no embedding
    title_of_item = np.full(len(items), missing, dtype=np.int64)
    title_of_item[shown] = table.indices(items["title"].iloc[shown].reset_index(drop=True), missing)
    return np.where(item_row >= 0, title_of_item[np.maximum(item_row, 0)], missing)


def known_title_rows(frame: pd.DataFrame, catalog: pd.DataFrame, table: EmbeddingTable, missing: int) -> np.ndarray:
    """Row of each item's title in `table`; `missing` for an item without a catalog title or whose
    title the table lacks (an earlier day's click on an item the day does not show)."""
    titles = catalog.drop_duplicates("item_id").set_index("item_id")["title"]
    codes, uniques = pd.factorize(frame["item_id"])
    rows = np.array([table._row.get(t, missing) if isinstance(t, str) else missing
                     for t in pd.Series(np.asarray(uniques, dtype=object)).map(titles)], dtype=np.int64)
    return np.where(codes >= 0, rows[np.maximum(codes, 0)] if len(rows) else missing, missing)


HASH_RANGE = 2**31 - 1  # id hashes are kept in 1..HASH_RANGE-1 (int32); each model folds them into its buckets


def hash_values(values: pd.Series) -> np.ndarray:
    """A fixed hash of each value in 1..HASH_RANGE-1 (the same on every machine and run), 0 for a missing
    value; computed once per distinct value."""
    codes, uniques = pd.factorize(values)
    if len(uniques) == 0:  # an all-null column (the contract allows it): nothing to hash, every row missing
        return np.zeros(len(values), dtype=np.int64)
    hashed = pd.util.hash_array(np.asarray(uniques, dtype=object)) % np.uint64(HASH_RANGE - 1) + np.uint64(1)
    return np.where(codes >= 0, hashed.astype(np.int64)[np.maximum(codes, 0)], 0)


def id_hashes(impressions: pd.DataFrame, catalog: pd.DataFrame) -> np.ndarray:
    """(n, len(ID_FEATURES)) int32: each impression's item id, and its catalog category and brand, hashed."""
    items = catalog.drop_duplicates("item_id").reset_index(drop=True)
    item_row = pd.Index(items["item_id"]).get_indexer(impressions["item_id"])
    out = np.empty((len(impressions), len(ID_FEATURES)), dtype=np.int32)
    out[:, 0] = hash_values(impressions["item_id"])
    for k, name in enumerate(ID_FEATURES[1:], start=1):
        of_item = hash_values(items[name]) if name in items else np.zeros(len(items), np.int64)
        out[:, k] = np.where(item_row >= 0, of_item[np.maximum(item_row, 0)], 0)
    return out


def extra_columns(impressions: pd.DataFrame) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The f_* columns of the impressions: (numeric names, (n, k) float32 values with NaN for a missing or
    infinite value, string names, (n, k) int32 hashes). Numbers and booleans are numeric."""
    names = sorted(c for c in impressions.columns if c.startswith(EXTRA_FEATURE_PREFIX))
    numeric = [c for c in names if pd.api.types.is_numeric_dtype(impressions[c]) or
               pd.api.types.is_bool_dtype(impressions[c])]
    categorical = [c for c in names if c not in numeric]
    values = np.empty((len(impressions), len(numeric)), dtype=np.float32)
    for k, name in enumerate(numeric):
        column = impressions[name].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        values[:, k] = np.where(np.isfinite(column), column, np.nan)
    hashes = np.empty((len(impressions), len(categorical)), dtype=np.int32)
    for k, name in enumerate(categorical):
        hashes[:, k] = hash_values(impressions[name])  # hashed per distinct value, no string per row
    return numeric, values, categorical, hashes


def build(impressions: pd.DataFrame, catalog: pd.DataFrame, table: EmbeddingTable,
          max_position: int, chunk_rows: int = 32_768, history: pd.DataFrame | None = None,
          recent_clicks: int = 10, item_prior: float = 5.0) -> Features:
    """The impressions' model inputs. `history`: the impressions (pipeline.model.history.COLUMNS) the history
    features read, each row only those strictly before it (None: the impressions themselves)."""
    texts = np.vstack([table.vectors.astype(np.float32, copy=False), np.zeros((1, table.dim), np.float32)])
    bad = ~np.isfinite(texts).all(axis=1)
    if bad.any():
        raise ValueError(f"the embedding of {int(bad.sum())} texts is not finite, "
                         f"e.g. {table.texts[int(np.argmax(bad))]!r}")
    query = table.indices(impressions["query"], missing=len(texts) - 1)
    title = title_indices(impressions, catalog, table, missing=len(texts) - 1)
    price = impressions["price"].astype("float64")
    cosine = np.empty(len(impressions), dtype=np.float32)
    for start in range(0, len(impressions), chunk_rows):  # chunked: never an (n, d) array for the log
        rows = slice(start, start + chunk_rows)
        cosine[rows] = np.einsum("nd,nd->n", texts[query[rows]], texts[title[rows]])
    dense = np.column_stack([
        cosine,
        np.log1p(price.fillna(0.0).clip(lower=0.0).to_numpy()),
        price.isna().to_numpy(dtype=np.float64),
        (impressions["surface"] == "search").to_numpy(dtype=np.float64),
        past.features(impressions, catalog, texts, title, lambda frame: known_title_rows(
            frame, catalog, table, len(texts) - 1), history, recent_clicks, item_prior, max_position, chunk_rows),
        lexical.query_coverage([*table.texts, None], query, title, chunk_rows),
    ]).astype(np.float32)
    for i, name in enumerate(DENSE_FEATURES):
        bad = ~np.isfinite(dense[:, i])
        if bad.any():
            raise ValueError(f"feature {name} is not finite for {int(bad.sum())} rows, "
                             f"e.g. event_id {impressions['event_id'].iloc[int(np.argmax(bad))]}")
    position = impressions["position"].to_numpy(dtype=np.int64).clip(1, max_position)
    numeric_names, numeric, categorical_names, categorical = extra_columns(impressions)
    return Features(
        query=torch.from_numpy(query.astype(np.int32)),  # int32 indices: 8 bytes a row saved on a large log
        title=torch.from_numpy(title.astype(np.int32)),
        dense=torch.from_numpy(dense),
        position=torch.from_numpy(position),
        click=torch.from_numpy(impressions["clicked"].to_numpy(dtype=np.float32)),
        purchase=torch.from_numpy(impressions["purchased"].to_numpy(dtype=np.float32)),
        texts=torch.from_numpy(texts),
        ids=torch.from_numpy(id_hashes(impressions, catalog)),
        numeric=torch.from_numpy(numeric), categorical=torch.from_numpy(categorical),
        numeric_names=tuple(numeric_names), categorical_names=tuple(categorical_names),
    )
