"""History features against a row-by-row brute force: what the user clicked and how the item fared
strictly before each impression."""
import numpy as np
import pandas as pd
import pytest

from pipeline.model import features, history
from pipeline.model.embeddings import EmbeddingTable

MAX_POSITION = 5
FIRST = features.DENSE_FEATURES.index(history.FEATURES[0])
LAST = FIRST + len(history.FEATURES)


def small_log(seed=0, requests=60):
    rng = np.random.default_rng(seed)
    n_items = 25
    categories = rng.choice(["A", "B", "C", None], n_items, p=[0.4, 0.3, 0.2, 0.1])
    catalog = pd.DataFrame({"item_id": [f"i{k}" for k in range(n_items)],
                            "title": [f"title {k}" for k in range(n_items)],
                            "category": categories, "price": rng.uniform(5, 50, n_items)})
    rows = []
    for r in range(requests):
        user = f"u{rng.integers(0, 6)}"
        ts = pd.Timestamp("2026-11-01", tz="UTC") + pd.Timedelta(seconds=int(rng.integers(0, 5000)))
        for position, item in enumerate(rng.choice(n_items, int(rng.integers(2, MAX_POSITION + 2)), replace=False), 1):
            rows.append({"event_id": f"e{len(rows)}", "request_id": f"r{r}", "user_id": user, "ts": ts,
                         "item_id": f"i{item}", "position": position, "surface": "recommend", "query": None,
                         "price": float(catalog["price"][item]) * rng.choice([1.0, 0.8]),
                         "clicked": int(rng.random() < 0.35), "purchased": 0})
    return pd.DataFrame(rows), catalog


def table_for(catalog):
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(len(catalog), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return EmbeddingTable(list(catalog["title"]), vectors)


def brute_force(impressions, catalog, table, logged, recent, prior):
    """Each row's features from a plain loop over the earlier rows."""
    cat = catalog.set_index("item_id")["category"]
    title = {t: table.vectors[i] for i, t in enumerate(table.texts)}
    vec = catalog.set_index("item_id")["title"].map(title)
    log_price = np.log1p(catalog.set_index("item_id")["price"])
    category_mean = log_price.groupby(cat.fillna("<none>")).mean()

    def relative(item, price):
        c = cat[item]
        return np.nan if pd.isna(c) else np.log1p(price) - category_mean[c]

    positions = logged["position"].clip(1, MAX_POSITION)
    rate = logged.groupby(positions)["clicked"].mean()
    out = []
    for _, row in impressions.iterrows():
        earlier = logged[logged["ts"] < row["ts"]]
        mine = earlier[(earlier["user_id"] == row["user_id"]) & (earlier["clicked"] == 1)].sort_values("ts", kind="stable")
        n = len(mine)
        last = mine.iloc[max(0, n - recent):]
        if n:
            mean = np.sum([vec[i] for i in last["item_id"]], axis=0)
            cosine = float(mean @ vec[row["item_id"]] / np.linalg.norm(mean))
            same = 0 if pd.isna(cat[row["item_id"]]) else sum(cat[i] == cat[row["item_id"]] for i in mine["item_id"])
            prices = [relative(i, p) for i, p in zip(last["item_id"], last["price"])]
            prices = [p for p in prices if np.isfinite(p)]
            gap = abs(relative(row["item_id"], row["price"]) - np.mean(prices)) if prices else 0.0
            gap = 0.0 if not np.isfinite(gap) else gap
        else:
            cosine, same, gap = 0.0, 0, 0.0
        shown = earlier[earlier["item_id"] == row["item_id"]]
        expected = float(rate[shown["position"].clip(1, MAX_POSITION)].sum()) if len(shown) else 0.0
        clicks = float(shown["clicked"].sum())
        out.append([np.log1p(n), cosine, same / n if n else 0.0, gap,
                    np.log((clicks + prior) / (expected + prior)), np.log1p(expected)])
    return np.array(out)


@pytest.mark.parametrize("recent", [2, 50])
def test_history_features_match_a_brute_force_over_earlier_rows(recent):
    impressions, catalog = small_log()
    table = table_for(catalog)
    x = features.build(impressions, catalog, table, MAX_POSITION, history=None, recent_clicks=recent, item_prior=3.0)
    got = x.dense[:, FIRST:LAST].numpy()
    expected = brute_force(impressions, catalog, table, impressions, recent, 3.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert (got[:, 0] > 0).any() and (got[:, 4] != 0).any()  # the log has history to read


def test_earlier_days_count_and_a_row_never_reads_its_own_request():
    impressions, catalog = small_log(seed=1)
    table = table_for(catalog)
    earlier = impressions.copy()
    earlier["ts"] = earlier["ts"] - pd.Timedelta(days=1)
    logged = pd.concat([earlier, impressions], ignore_index=True)[list(history.COLUMNS)]
    x = features.build(impressions, catalog, table, MAX_POSITION, history=logged, recent_clicks=4, item_prior=3.0)
    np.testing.assert_allclose(x.dense[:, FIRST:LAST].numpy(), brute_force(impressions, catalog, table, logged, 4, 3.0),
                               rtol=1e-4, atol=1e-5)
    # Flipping the labels of one request leaves that request's own features as they were.
    request = impressions["request_id"].iloc[-1]
    own = (impressions["request_id"] == request).to_numpy()
    flipped = impressions.copy()
    flipped.loc[own, "clicked"] = 1 - flipped.loc[own, "clicked"]
    flipped_logged = pd.concat([earlier, flipped], ignore_index=True)[list(history.COLUMNS)]
    same_curve = features.build(impressions, catalog, table, MAX_POSITION, history=flipped_logged,
                                recent_clicks=4, item_prior=3.0)
    # The position curve is a log-wide aggregate, so compare the user features and the raw counts.
    np.testing.assert_array_equal(same_curve.dense[own, FIRST:FIRST + 4].numpy(), x.dense[own, FIRST:FIRST + 4].numpy())


def test_a_user_or_item_without_history_gets_zeros():
    impressions, catalog = small_log(seed=2, requests=1)
    table = table_for(catalog)
    x = features.build(impressions, catalog, table, MAX_POSITION, history=None, recent_clicks=5, item_prior=3.0)
    assert np.all(x.dense[:, FIRST:LAST].numpy() == 0.0)
