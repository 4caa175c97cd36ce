"""The lexical match feature against a brute-force count of shared trigrams, and inside the features."""
import numpy as np
import pandas as pd
import pytest

from pipeline.model import features, lexical
from pipeline.model.embeddings import EmbeddingTable

QUERIES = ["red wool scarf", "rde wool scarf", "nike", "东京 ラーメン", "قميص أزرق", "👟 running shoe", "a"]
TITLES = ["Northwind Red Wool Scarf, One Size", "Hearth & Loom Cotton Sheet, King", "NIKE Air Zoom 40",
          "東京 ラーメン 丼", "قميص قطن أزرق", "Trailrunner Running Shoe 👟", "A4 paper", ""]


def brute_share(query: str, title: str) -> float:
    def grams(text):
        words = [w for w in "".join(c if c.isalnum() or c == "_" else " " for c in text.lower()).split()]
        return {w[i:i + 3] for w in words for i in range(max(len(w) - 2, 1))}
    q = grams(query)
    return len(q & grams(title)) / len(q) if q else 0.0


def test_coverage_matches_a_brute_force_count_for_every_pair():
    texts = QUERIES + TITLES + [None]
    q_rows, t_rows = np.meshgrid(np.arange(len(QUERIES)), np.arange(len(QUERIES), len(QUERIES) + len(TITLES)))
    q_rows, t_rows = q_rows.ravel(), t_rows.ravel()
    got = lexical.query_coverage(texts, q_rows, t_rows, chunk_rows=5)  # several chunks
    want = [brute_share(texts[q], texts[t]) for q, t in zip(q_rows, t_rows)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_what_the_share_says():
    texts = ["red wool scarf", "rde wool scarf", "Red Wool Scarf", "Blue Cotton Sheet", None]
    share = lexical.query_coverage(texts, np.array([0, 1, 0, 4]), np.array([2, 2, 3, 2]))
    assert share[0] == pytest.approx(1.0)      # every trigram of the query is in the title, case aside
    assert 0.5 < share[1] < 1.0                # a typo loses only the grams it touches
    assert share[2] == 0.0 and share[3] == 0.0  # nothing shared; no query


def test_features_carry_the_share_for_search_rows_and_zero_for_recommendations():
    catalog = pd.DataFrame({"item_id": ["i1", "i2"], "title": ["Red Wool Scarf", "Blue Cotton Sheet"],
                            "category": ["a", "b"], "brand": [None, None], "price": [10.0, 20.0]})
    impressions = pd.DataFrame({
        "event_id": ["e1", "e2", "e3"], "request_id": ["r1", "r1", "r2"], "user_id": ["u", "u", "u"],
        "ts": pd.to_datetime(["2026-11-01 10:00", "2026-11-01 10:00", "2026-11-01 11:00"], utc=True),
        "surface": ["search", "search", "recommend"], "query": ["red scarf", "red scarf", None],
        "item_id": ["i1", "i2", "i1"], "position": [1, 2, 1], "clicked": [1, 0, 0], "purchased": [0, 0, 0],
        "price": [10.0, 20.0, 10.0]})
    texts = ["red scarf", "Red Wool Scarf", "Blue Cotton Sheet"]
    table = EmbeddingTable(texts, np.eye(3, 4, dtype=np.float32))
    x = features.build(impressions, catalog, table, max_position=5)
    column = x.dense[:, features.DENSE_FEATURES.index("query_title_overlap")].numpy()
    np.testing.assert_allclose(column, [brute_share("red scarf", "Red Wool Scarf"),
                                        brute_share("red scarf", "Blue Cotton Sheet"), 0.0], rtol=1e-6)
    assert column[0] == pytest.approx(1.0) and column[1] == 0.0
