"""From a day's impressions to model inputs: the time split and the feature tensors."""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Features:
    query: torch.Tensor      # (n, d) query embedding, zeros when there is no query
    title: torch.Tensor      # (n, d)
    dense: torch.Tensor      # (n, len(DENSE_FEATURES))
    position: torch.Tensor   # (n,) long, clipped to max_position
    click: torch.Tensor      # (n,) float
    purchase: torch.Tensor   # (n,) float

    def __len__(self) -> int:
        return len(self.click)

    def subset(self, index) -> "Features":
        index = torch.as_tensor(index)
        return Features(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def to(self, device: str) -> "Features":
        return Features(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def item_titles(impressions: pd.DataFrame, catalog: pd.DataFrame) -> list[str]:
    titles = catalog.drop_duplicates("item_id").set_index("item_id")["title"]
    return impressions["item_id"].map(titles).tolist()


def build(impressions: pd.DataFrame, catalog: pd.DataFrame, table: EmbeddingTable,
          max_position: int) -> Features:
    query = table.lookup(impressions["query"].tolist())
    title = table.lookup(item_titles(impressions, catalog))
    price = impressions["price"].astype("float64")
    dense = np.column_stack([
        (query * title).sum(axis=1),
        np.log1p(price.fillna(0.0).clip(lower=0.0).to_numpy()),
        price.isna().to_numpy(dtype=np.float64),
        (impressions["surface"] == "search").to_numpy(dtype=np.float64),
    ]).astype(np.float32)
    for name, block in (("query embedding", query), ("title embedding", title)):
        if not np.isfinite(block).all():
            raise ValueError(f"{name} is not finite for {int((~np.isfinite(block).all(axis=1)).sum())} rows")
    for i, name in enumerate(DENSE_FEATURES):
        bad = ~np.isfinite(dense[:, i])
        if bad.any():
            raise ValueError(f"feature {name} is not finite for {int(bad.sum())} rows, "
                             f"e.g. event_id {impressions['event_id'].iloc[int(np.argmax(bad))]}")
    position = impressions["position"].to_numpy(dtype=np.int64).clip(1, max_position)
    return Features(
        query=torch.from_numpy(query),
        title=torch.from_numpy(title),
        dense=torch.from_numpy(dense),
        position=torch.from_numpy(position),
        click=torch.from_numpy(impressions["clicked"].to_numpy(dtype=np.float32)),
        purchase=torch.from_numpy(impressions["purchased"].to_numpy(dtype=np.float32)),
    )
