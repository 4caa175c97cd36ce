"""From a day's impressions to model inputs: the time split and the feature tensors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.embeddings import EmbeddingTable

DENSE_FEATURES = ("query_title_cosine", "log_price", "price_missing", "is_search")


def holdout_mask(impressions: pd.DataFrame, holdout_fraction: float) -> np.ndarray:
    """True for rows of the day's last requests by time: the evaluation slice. Ties break on id."""
    first_ts = impressions.groupby("request_id", sort=False)["ts"].min()
    order = first_ts.reset_index().sort_values(["ts", "request_id"], kind="stable")["request_id"]
    n_holdout = int(round(len(order) * holdout_fraction))
    held = set(order.iloc[len(order) - n_holdout:]) if n_holdout else set()
    return impressions["request_id"].isin(held).to_numpy()


class Features:
    """Model inputs for n rows. The query and title embeddings are held either as (n, d) tensors or, as
    `build` makes them, as (n,) indices into `texts` (one row per unique text plus a zero row): a 10M-row
    log then holds two integers per row instead of 2 x d floats, and `.query`/`.title` gather the vectors
    of the rows asked for (train and score batch by batch to keep that small)."""

    def __init__(self, query: torch.Tensor, title: torch.Tensor, dense: torch.Tensor, position: torch.Tensor,
                 click: torch.Tensor, purchase: torch.Tensor, texts: torch.Tensor | None = None):
        self._query, self._title = query, title  # (n, d) vectors, or (n,) indices into texts
        self.dense = dense          # (n, len(DENSE_FEATURES))
        self.position = position    # (n,) long, clipped to max_position
        self.click = click          # (n,) float
        self.purchase = purchase    # (n,) float
        self.texts = texts          # (unique texts + 1, d) or None

    @property
    def query(self) -> torch.Tensor:
        """(n, d) query embeddings, zeros where there is no query."""
        return self._query if self.texts is None else self.texts[self._query]

    @property
    def title(self) -> torch.Tensor:
        return self._title if self.texts is None else self.texts[self._title]

    @property
    def text_dim(self) -> int:
        return int((self._query if self.texts is None else self.texts).shape[1])

    def with_texts(self, texts: torch.Tensor) -> "Features":
        """The same rows gathering their text vectors from `texts` (same rows, other vectors: for
        example projected ones); only for rows that hold text indices."""
        if self.texts is None:
            raise ValueError("with_texts: these rows hold their text vectors, not indices into a table")
        return Features(*self._columns(), texts=texts)

    def __len__(self) -> int:
        return len(self.click)

    def _columns(self) -> tuple[torch.Tensor, ...]:
        return self._query, self._title, self.dense, self.position, self.click, self.purchase

    def subset(self, index) -> "Features":
        index = torch.as_tensor(index)
        return Features(*(column[index] for column in self._columns()), texts=self.texts)

    def to(self, device: str, non_blocking: bool = False) -> "Features":
        texts = None if self.texts is None else self.texts.to(device, non_blocking=non_blocking)
        return Features(*(column.to(device, non_blocking=non_blocking) for column in self._columns()), texts=texts)

    def gathered(self) -> "Features":
        """The same rows holding their own text vectors (no shared table): what a DataLoader worker
        hands over, so that pinning and copying a batch moves only the batch."""
        return Features(self.query, self.title, self.dense, self.position, self.click, self.purchase)

    def pin_memory(self) -> "Features":
        """Page-locked copies, for DataLoader(pin_memory=True) and non-blocking copies to the GPU."""
        texts = None if self.texts is None else self.texts.pin_memory()
        return Features(*(column.pin_memory() for column in self._columns()), texts=texts)


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


def build(impressions: pd.DataFrame, catalog: pd.DataFrame, table: EmbeddingTable,
          max_position: int, chunk_rows: int = 32_768) -> Features:
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
    ]).astype(np.float32)
    for i, name in enumerate(DENSE_FEATURES):
        bad = ~np.isfinite(dense[:, i])
        if bad.any():
            raise ValueError(f"feature {name} is not finite for {int(bad.sum())} rows, "
                             f"e.g. event_id {impressions['event_id'].iloc[int(np.argmax(bad))]}")
    position = impressions["position"].to_numpy(dtype=np.int64).clip(1, max_position)
    return Features(
        query=torch.from_numpy(query.astype(np.int32)),  # int32 indices: 8 bytes a row saved on a large log
        title=torch.from_numpy(title.astype(np.int32)),
        dense=torch.from_numpy(dense),
        position=torch.from_numpy(position),
        click=torch.from_numpy(impressions["clicked"].to_numpy(dtype=np.float32)),
        purchase=torch.from_numpy(impressions["purchased"].to_numpy(dtype=np.float32)),
        texts=torch.from_numpy(texts),
    )
