"""What happened before each impression: the user's earlier clicks and the item's earlier
impressions, as features for the ranker.

Every feature of a row reads only rows strictly earlier than the row's own time, so the labels of
the row's request (which share its time) never leak into its features, and a day's rows may read
the days before it as well as their own day's earlier rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

USER_FEATURES = ("history_clicks", "history_title_cosine", "history_category_share", "history_price_gap")
ITEM_FEATURES = ("item_click_ratio", "item_exposure")
FEATURES = USER_FEATURES + ITEM_FEATURES
COLUMNS = ("user_id", "item_id", "ts", "price", "position", "clicked")  # a history frame: impressions


def history_rows(impressions: pd.DataFrame) -> pd.DataFrame:
    """The impressions as a history frame (only the columns the features read)."""
    return impressions.loc[:, [c for c in COLUMNS if c in impressions]]


def clicked_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The clicked rows of a history frame (a frame without `clicked` holds clicks only)."""
    return frame.loc[frame["clicked"].to_numpy() == 1] if "clicked" in frame else frame


def _codes(*columns: pd.Series) -> list[np.ndarray]:
    """Shared integer codes of several columns (-1 for a missing value). Each column is factorized on its
    own and only the distinct values meet as Python objects: a 10M-row column never becomes 10M objects."""
    factorized = [pd.factorize(pd.Series(c)) for c in columns]
    distinct = [np.asarray(uniques, dtype=object) for _, uniques in factorized]
    shared = pd.factorize(pd.Series(np.concatenate(distinct) if distinct else np.array([], dtype=object)))[0]
    result, offset = [], 0
    for (codes, _), values in zip(factorized, distinct):
        mapping = np.append(shared[offset:offset + len(values)], -1)  # code -1 (missing) reads the last entry
        result.append(mapping[codes].astype(np.int64))
        offset += len(values)
    return result


def _microseconds(ts: pd.Series) -> np.ndarray:
    """UTC microseconds since the epoch, whatever the column's unit or time zone."""
    return pd.to_datetime(ts, utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)


def _relative_log_price(price: pd.Series, category: np.ndarray, category_mean: np.ndarray) -> np.ndarray:
    """log(1 + price) minus its category's mean in the catalog; NaN where either is unknown."""
    value = np.log1p(pd.to_numeric(price, errors="coerce").astype("float64").clip(lower=0).to_numpy())
    mean = np.where(category >= 0, category_mean[np.maximum(category, 0)], np.nan)
    return value - mean


def features(impressions: pd.DataFrame, catalog: pd.DataFrame, texts: np.ndarray, title_rows: np.ndarray,
             title_rows_of, history: pd.DataFrame | None, recent: int, item_prior: float,
             max_position: int, chunk_rows: int = 32_768) -> np.ndarray:
    """(n, len(FEATURES)) float32: user_features, then item_features. `history`: earlier impressions
    (COLUMNS) of any time, each row reading those strictly before it; None: the impressions themselves."""
    frame = history_rows(impressions) if history is None else history
    users = user_features(impressions, catalog, texts, title_rows, title_rows_of, clicked_rows(frame), recent,
                          chunk_rows)
    items = item_features(impressions, frame, item_prior, max_position)
    return np.hstack([users, items]).astype(np.float32)


def item_features(impressions: pd.DataFrame, history: pd.DataFrame, prior: float, max_position: int) -> np.ndarray:
    """(n, 2): item_click_ratio, log((clicks + prior) / (expected + prior)) over the item's earlier
    impressions, where `expected` sums the click rate of each impression's position (a position-fair
    attractiveness: an item clicked as often as its places predict is at 0); item_exposure,
    log(1 + expected), how much evidence the ratio rests on. 0 for an item never shown before, or a
    history frame without positions and labels."""
    out = np.zeros((len(impressions), len(ITEM_FEATURES)), dtype=np.float32)
    if len(impressions) == 0 or len(history) == 0 or not {"position", "clicked"} <= set(history):
        return out
    position = history["position"].to_numpy(dtype=np.int64).clip(1, max_position)
    clicked = history["clicked"].to_numpy(dtype=np.float64)
    # The position curve is an aggregate over every row handed in: no row's own label matters to it.
    shown = np.bincount(position, minlength=max_position + 1).astype(np.float64)
    rate = np.bincount(position, weights=clicked, minlength=max_position + 1) / np.maximum(shown, 1)
    expected = rate[position]
    row_item, past_item = _codes(impressions["item_id"], history["item_id"])
    row_ts, past_ts = _microseconds(impressions["ts"]), _microseconds(history["ts"])
    stamps, inverse = np.unique(np.concatenate([row_ts, past_ts]), return_inverse=True)
    n_ts = len(stamps) + 1
    row_t, past_t = inverse[:len(row_ts)], inverse[len(row_ts):]
    order = np.lexsort((past_t, past_item))
    key = past_item[order].astype(np.int64) * n_ts + past_t[order]
    cum_clicks = np.concatenate([[0.0], np.cumsum(clicked[order])])
    cum_expected = np.concatenate([[0.0], np.cumsum(expected[order])])
    end = np.searchsorted(key, row_item.astype(np.int64) * n_ts + row_t, side="left")
    start = np.searchsorted(key, row_item.astype(np.int64) * n_ts, side="left")
    known = row_item >= 0
    clicks = np.where(known, cum_clicks[end] - cum_clicks[start], 0.0)
    seen = np.where(known, cum_expected[end] - cum_expected[start], 0.0)
    out[:, 0] = np.log((clicks + prior) / (seen + prior))
    out[:, 1] = np.log1p(seen)
    return out


def user_features(impressions: pd.DataFrame, catalog: pd.DataFrame, texts: np.ndarray, title_rows: np.ndarray,
                  title_rows_of, clicks: pd.DataFrame, recent: int, chunk_rows: int = 32_768) -> np.ndarray:
    """(n, len(USER_FEATURES)) float32 for the impressions:
    history_clicks: log(1 + the user's earlier clicks);
    history_title_cosine: cosine of the row's title with the mean title of the user's `recent` last clicks;
    history_category_share: share of the user's earlier clicks in the row's catalog category;
    history_price_gap: |the row's log price - the recent clicks' mean|, both relative to their category.
    0 where the user has no earlier click. `texts` holds unit vectors (a zero last row for no text),
    `title_rows` each impression's title row in it, `title_rows_of(frame)` the same for `clicks` (clicked
    rows of any time)."""
    n = len(impressions)
    out = np.zeros((n, len(USER_FEATURES)), dtype=np.float32)
    clicks = clicks[clicks["user_id"].notna().to_numpy()]
    if n == 0 or len(clicks) == 0 or recent < 1:
        return out
    items = catalog.drop_duplicates("item_id").reset_index(drop=True)
    item_category = pd.factorize(pd.Series(np.asarray(items["category"], dtype=object)))[0] \
        if "category" in items else np.full(len(items), -1)
    n_categories = int(item_category.max()) + 2  # one more code for an unknown category
    item_log_price = np.log1p(pd.to_numeric(items["price"], errors="coerce").astype("float64").clip(lower=0)) \
        if "price" in items else pd.Series(np.nan, index=items.index)
    category_mean = pd.Series(item_log_price.to_numpy()).groupby(item_category).mean()
    category_mean = category_mean.reindex(range(n_categories), fill_value=np.nan).to_numpy()

    def category_of(frame: pd.DataFrame) -> np.ndarray:
        row = pd.Index(items["item_id"]).get_indexer(frame["item_id"])
        return np.where(row >= 0, item_category[np.maximum(row, 0)], -1)

    row_user, click_user = _codes(impressions["user_id"], clicks["user_id"])
    row_ts, click_ts = _microseconds(impressions["ts"]), _microseconds(clicks["ts"])
    stamps, inverse = np.unique(np.concatenate([row_ts, click_ts]), return_inverse=True)
    n_ts = len(stamps) + 1
    row_t, click_t = inverse[:n], inverse[n:]
    row_cat, click_cat = category_of(impressions), category_of(clicks)

    order = np.lexsort((click_t, click_user))
    click_key = click_user[order] * n_ts + click_t[order]
    known = row_user >= 0
    end = np.searchsorted(click_key, row_user * n_ts + row_t, side="left")   # first click at or after the row
    start = np.searchsorted(click_key, row_user * n_ts, side="left")         # the user's first click
    count = np.where(known, end - start, 0)
    out[:, 0] = np.log1p(count)

    cat_key = (click_user.astype(np.int64) * n_categories + click_cat + 1) * n_ts + click_t
    cat_key.sort()
    row_base = (row_user.astype(np.int64) * n_categories + row_cat + 1) * n_ts
    in_category = np.searchsorted(cat_key, row_base + row_t) - np.searchsorted(cat_key, row_base)
    out[:, 2] = np.where(count > 0, np.where(row_cat >= 0, in_category, 0) / np.maximum(count, 1), 0.0)

    click_title = title_rows_of(clicks)[order]
    click_price = _relative_log_price(clicks["price"] if "price" in clicks else pd.Series(np.nan, index=clicks.index),
                                      click_cat, category_mean)[order]
    row_price = _relative_log_price(impressions["price"], row_cat, category_mean)
    for lo in range(0, n, chunk_rows):
        rows = slice(lo, min(lo + chunk_rows, n))
        first, last = np.maximum(start[rows], end[rows] - recent), end[rows]
        total = np.zeros((last.size, texts.shape[1]), dtype=np.float32)
        price_sum, price_count = np.zeros(last.size), np.zeros(last.size)
        for back in range(1, recent + 1):
            j = last - back
            take = known[rows] & (j >= first)
            if not take.any():
                break
            jj = np.where(take, j, 0)
            total += texts[click_title[jj]] * take[:, None]
            price = np.where(take, click_price[jj], np.nan)
            price_sum += np.nan_to_num(price)
            price_count += np.isfinite(price)
        norm = np.linalg.norm(total, axis=1)
        cosine = np.einsum("nd,nd->n", total, texts[title_rows[rows]]) / np.maximum(norm, 1e-12)
        out[rows, 1] = np.where(norm > 0, cosine, 0.0)
        gap = np.abs(row_price[rows] - price_sum / np.maximum(price_count, 1))
        out[rows, 3] = np.where((price_count > 0) & np.isfinite(gap), gap, 0.0)
    return out
