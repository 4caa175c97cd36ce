"""Evaluate's metrics on hand-made arrays with known answers, and the slices of the held-out rows."""
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.model import metrics as m
from pipeline.model import slices
from pipeline.model.evaluation import Scorer, check_config, scored_slices, window_days

# Three requests: a (clicks at score ranks 2 and 3), b (click at rank 1), c (no click).
GROUPS = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
CLICKED = np.array([0, 1, 0, 1, 1, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.1, 0.5, 0.3, 0.2, 0.6, 0.4])


def test_ranks_within_each_group_by_descending_score_ties_by_a_seeded_permutation():
    ranks = m.ranks_within(GROUPS, SCORES)
    assert ranks.tolist() == [1, 2, 4, 3, 1, 2, 1, 2]
    groups, tied_scores = np.array(["x", "x", "y", "x"]), np.array([0.5, 0.5, 0.1, 0.5])
    tied = m.ranks_within(groups, tied_scores)
    # The tied rows of x take ranks 1..3 in the order of the seeded permutation, the same on every call.
    key = m.tie_breaker(4)
    x_rows = [0, 1, 3]
    expected = {row: r + 1 for r, row in enumerate(sorted(x_rows, key=lambda row: key[row]))}
    assert tied.tolist() == [expected[0], expected[1], 1, expected[3]]
    assert m.ranks_within(groups, tied_scores).tolist() == tied.tolist()


def test_a_constant_score_gets_no_credit_from_the_logged_order():
    """Rows come in the logged order, which here is the ideal one: a constant score must rank like a
    random shuffle, not like the log."""
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(2000), 10)
    relevance = np.concatenate([np.sort(rng.random(10))[::-1] for _ in range(2000)])  # logged best first
    clicked = (np.tile(np.arange(10), 2000) == 0).astype(int)                        # a click on top only
    logged = m.ndcg_at_k(groups, relevance, -np.tile(np.arange(10), 2000), 3)
    constant = m.ndcg_at_k(groups, relevance, np.zeros(len(groups)), 3)
    shuffled = m.ndcg_at_k(groups, relevance, rng.random(len(groups)), 3)
    assert logged == pytest.approx(1.0)
    assert constant == pytest.approx(shuffled, abs=0.01) and constant < logged - 0.2
    # MRR of the top-clicked rows: the log gets 1, a constant score about the mean of 1/rank over 10 places.
    assert m.mrr(groups, clicked, np.zeros(len(groups))) == pytest.approx(np.mean(1 / np.arange(1, 11)), abs=0.02)
    # Seeds move the tie order, not its distribution.
    other = m.ndcg_at_k_from_ranks(groups, relevance, m.ranks_within(groups, np.zeros(len(groups)), seed=5), 3)
    assert other == pytest.approx(constant, abs=0.02)


def test_mrr_known_answer():
    # a: first click at rank 2 -> 1/2; b: rank 1 -> 1; c has no click and does not count.
    assert m.mrr(GROUPS, CLICKED, SCORES) == pytest.approx((0.5 + 1.0) / 2)


def test_recall_at_k_known_answer():
    # k=2: a has clicks at ranks 2 and 3 -> 1/2; b -> 1; c does not count.
    assert m.recall_at_k(GROUPS, CLICKED, SCORES, 2) == pytest.approx(0.75)
    assert m.recall_at_k(GROUPS, CLICKED, SCORES, 3) == pytest.approx(1.0)
    assert m.recall_at_k(GROUPS, CLICKED, SCORES, 1) == pytest.approx(0.5)


def test_ndcg_known_answer():
    # a: gains at ranks 2 and 3; ideal at ranks 1 and 2. b: perfect.
    a = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m.ndcg_at_k(GROUPS, CLICKED, SCORES, 10) == pytest.approx((a + 1.0) / 2)
    # k=2 cuts a's click at rank 3 off.
    a2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m.ndcg_at_k(GROUPS, CLICKED, SCORES, 2) == pytest.approx((a2 + 1.0) / 2)


def test_ranking_metrics_are_none_without_any_relevant_row():
    none = np.zeros(len(GROUPS), dtype=int)
    assert m.mrr(GROUPS, none, SCORES) is None
    assert m.recall_at_k(GROUPS, none, SCORES, 10) is None
    assert m.ndcg_at_k(GROUPS, none, SCORES, 10) is None
    assert m.auc(none, SCORES) is None


def reference_ndcg(groups, gains, scores, k):
    """The straightforward per-request loop, to check the vectorised one against (ties in the order of
    the seeded permutation metrics documents)."""
    values = []
    key = m.tie_breaker(len(groups))
    for g in pd.unique(groups):
        idx = np.flatnonzero(groups == g)
        gain = gains[idx]
        if gain.max() <= 0:
            continue
        ranked = gain[np.lexsort((key[idx], -scores[idx]))][:k]
        ideal = np.sort(gain)[::-1][:k]
        disc = 1 / np.log2(np.arange(2, k + 2))
        values.append((ranked * disc[:len(ranked)]).sum() / (ideal * disc[:len(ideal)]).sum())
    return float(np.mean(values))


def test_vectorised_ndcg_matches_the_per_request_loop():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(300), rng.integers(3, 25, 300))
    gains = 2.0 ** (rng.random(len(groups)) < 0.15) - 1.0 + 2.0 * (rng.random(len(groups)) < 0.03)
    scores = np.round(rng.random(len(groups)), 1)  # many ties
    assert m.ndcg_at_k(groups, gains, scores, 10) == pytest.approx(reference_ndcg(groups, gains, scores, 10))


def test_item_slice_is_scored_at_the_rank_in_the_whole_list():
    ranks = m.ranks_within(GROUPS, SCORES)
    # Only rows 1 and 3 of request a (both clicked, ranks 2 and 3 of the whole list).
    rows = np.array([1, 3])
    assert m.mrr_from_ranks(GROUPS[rows], CLICKED[rows], ranks[rows]) == pytest.approx(0.5)
    assert m.recall_at_k_from_ranks(GROUPS[rows], CLICKED[rows], ranks[rows], 2) == pytest.approx(0.5)
    ideal = 1 + 1 / math.log2(3)
    assert m.ndcg_at_k_from_ranks(GROUPS[rows], CLICKED[rows], ranks[rows], 10) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(4)) / ideal)


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_logloss_match_scikit_learn_with_ties_and_resample_counts(seed):
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(seed)
    n = 400
    labels = (rng.random(n) < 0.2).astype(int)
    scores = np.round(rng.normal(size=n) + labels, 1)  # rounded: many ties, within and across classes
    counts = rng.poisson(1.0, n)                        # a bootstrap resample, zeros included
    p = rng.uniform(0, 1, n)
    p[:3] = [0.0, 1.0, 1e-12]                           # clipped like scikit-learn's input

    assert m.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    keep = counts > 0
    assert m.auc(labels, scores, counts) == pytest.approx(
        roc_auc_score(labels[keep], scores[keep], sample_weight=counts[keep]), abs=1e-12)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    assert m.logloss(labels, p) == pytest.approx(log_loss(labels, clipped, labels=[0, 1]), rel=1e-12)
    assert m.logloss(labels, p, counts) == pytest.approx(
        log_loss(labels, clipped, labels=[0, 1], sample_weight=counts), rel=1e-12)
    assert m.auc(np.zeros(5), np.arange(5)) is None


def test_direction_of_every_metric_evaluate_writes():
    assert [m.direction_of(n) for n in ("auc_click", "logloss_click", "ece_click", "auc_purchase",
                                        "ndcg_at_10", "mrr", "recall_at_5", "ndcg_at_10_true",
                                        "ndcg_at_5_ips", "score_spread")] == \
        ["higher", "lower", "lower", "higher", "higher", "higher", "higher", "higher", "higher", "higher"]
    assert m.direction_of("ndcg_at") is None and m.direction_of("precision_at_10") is None
    assert m.direction_of("ndcg_at_10_fake") is None and m.direction_of("ndcg_at_x_true") is None


CFG = {"ndcg_k": 10, "recall_k": 2, "calibration_bins": 10,
       "slices": {"by": list(slices.SLICINGS), "head_query_min_requests": 2, "new_item_history_days": None}}


def frame(**columns):
    n = len(next(iter(columns.values())))
    base = {"request_id": [f"r{i}" for i in range(n)], "surface": ["search"] * n, "query": ["q"] * n,
            "item_id": ["i1"] * n, "clicked": [0] * n, "purchased": [0] * n, "position": list(range(1, n + 1))}
    return pd.DataFrame({**base, **columns})


def test_scorer_gives_none_not_half_on_a_one_class_slice():
    impressions = frame(request_id=list(GROUPS), clicked=list(CLICKED))
    scorer = Scorer(impressions, CFG)
    p = {"p_click": SCORES, "p_purchase": SCORES / 2, "score": SCORES}
    ranks = scorer.ranks(SCORES)
    whole = scorer.score(p, ranks)
    assert whole["mrr"] == 0.75 and whole["recall_at_2"] == 0.75
    assert whole["auc_purchase"] is None  # no purchase at all
    no_click = scorer.score(p, ranks, np.array([6, 7]))
    assert no_click["auc_click"] is None and no_click["mrr"] is None and no_click["ndcg_at_10"] is None
    assert no_click["logloss_click"] is not None
    out = scored_slices(scorer, {"request=c": np.arange(8) >= 6}, {"candidate": (p, ranks), "champion": None})
    assert out == {"request=c": {"rows": 2, "requests": 1, "clicks": 0, "purchases": 0, "candidate": no_click,
                                 "champion": None}}


def write_day(root, day, items):
    folder = root / "impressions" / f"dt={day}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": pa.array(items, pa.string())}), folder / "part-0.parquet")


def held_out():
    rows = pd.DataFrame({
        "request_id": ["r1", "r1", "r2", "r2", "r3", "r4"],
        "surface": ["search", "search", "search", "search", "recommend", "recommend"],
        "query": ["red shoes", "red shoes", "lamp", "lamp", None, None],
        "item_id": ["s1", "s2", "h1", "x9", "s1", "h1"],
    })
    day = pd.concat([rows, pd.DataFrame({"request_id": ["r0"], "surface": ["search"], "query": ["red shoes"],
                                         "item_id": ["s1"]})], ignore_index=True)
    catalog = pd.DataFrame({"item_id": ["s1", "s2", "h1"],
                            "category": ["Shoes>Running>Men", "Shoes>Casual", None]})
    return rows, day, catalog


def test_slices_by_surface_category_query_frequency_and_new_items(tmp_path):
    rows, day, catalog = held_out()
    write_day(tmp_path, "2026-10-30", ["s1"])
    write_day(tmp_path, "2026-10-31", ["h1", "zz"])
    write_day(tmp_path, "2026-11-02", ["s2"])  # a later day says nothing about newness
    masks, notes = slices.build(rows, day, catalog, tmp_path, "2026-11-01", CFG["slices"])
    as_rows = {name: np.flatnonzero(mask).tolist() for name, mask in masks.items()}
    assert as_rows == {
        "surface=search": [0, 1, 2, 3], "surface=recommend": [4, 5],
        "category=Shoes": [0, 1, 4], "category=(none)": [2, 3, 5],   # h1 has no category, x9 no catalog row
        "query=head": [0, 1], "query=tail": [2, 3],                  # "red shoes": 2 requests of the day
        "item=new": [1, 3],                                          # s2, x9: never shown before
    }
    assert notes["new_item"] == {"history_days": ["2026-10-30", "2026-10-31"], "unreadable_days": []}
    assert notes["query_frequency"]["without_query"] == 2


def test_new_items_look_back_only_as_far_as_params_say(tmp_path):
    rows, day, catalog = held_out()
    write_day(tmp_path, "2026-10-30", ["s1", "s2"])
    write_day(tmp_path, "2026-10-31", ["h1"])
    cfg = {**CFG["slices"], "new_item_history_days": 1}
    masks, notes = slices.build(rows, day, catalog, tmp_path, "2026-11-01", cfg)
    assert np.flatnonzero(masks["item=new"]).tolist() == [0, 1, 3, 4]
    assert notes["new_item"]["history_days"] == ["2026-10-31"]
    # A window file's days, when given, replace the folder's.
    masks, notes = slices.build(rows, day, catalog, tmp_path, "2026-11-01", CFG["slices"], ["2026-10-30"])
    assert np.flatnonzero(masks["item=new"]).tolist() == [2, 3, 5]


def test_without_earlier_days_no_item_is_called_new(tmp_path):
    rows, day, catalog = held_out()
    write_day(tmp_path, "2026-11-01", ["s1"])
    masks, notes = slices.build(rows, day, catalog, tmp_path, "2026-11-01", CFG["slices"])
    assert "item=new" not in masks
    assert notes["new_item"]["history_days"] == []
    assert "no earlier day" in notes["new_item"]["note"]


def test_unreadable_earlier_day_is_reported_not_counted(tmp_path):
    rows, day, catalog = held_out()
    write_day(tmp_path, "2026-10-30", ["s1", "s2", "h1", "x9"])
    broken = tmp_path / "impressions" / "dt=2026-10-31"
    broken.mkdir(parents=True)
    (broken / "part-0.parquet").write_bytes(b"not parquet")
    masks, notes = slices.build(rows, day, catalog, tmp_path, "2026-11-01", CFG["slices"])
    assert notes["new_item"] == {"history_days": ["2026-10-30"], "unreadable_days": ["2026-10-31"]}
    assert "item=new" not in masks  # every item was seen on the readable day: an empty slice is dropped


def test_top_category_of_the_catalog_path():
    catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "category": ["Shoes>Running>Men", "", " Home > Lamps"]})
    assert slices.top_category(pd.Series(["a", "b", "c", "d"]), catalog).tolist() == \
        ["Shoes", "(none)", "Home", "(none)"]


@pytest.mark.parametrize("change, message", [
    ({"by": ["surface", "brand"]}, r"evaluate.slices.by: unknown slicing 'brand'"),
    ({"by": "surface"}, r"evaluate.slices.by must be a list"),
    ({"head_query_min_requests": 0}, r"head_query_min_requests must be a whole number >= 1, got 0"),
    ({"new_item_history_days": 0}, r"new_item_history_days must be null"),
])
def test_bad_slice_config_is_a_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        slices.check_config({**CFG["slices"], **change})


def test_bad_metric_config_is_a_clear_error():
    with pytest.raises(ValueError, match=r"evaluate.recall_k must be a whole number >= 1, got None"):
        check_config({k: v for k, v in CFG.items() if k != "recall_k"})


def test_window_file_lists_the_earlier_days(tmp_path):
    path = tmp_path / "window.json"
    path.write_text('{"day": "2026-11-03", "previous": [{"day": "2026-11-02"}, {"day": "2026-11-01"}]}')
    assert window_days(path) == ["2026-11-01", "2026-11-02"]
    path.write_text('{"day": "2026-11-03"}')
    with pytest.raises(ValueError, match="expected a window manifest"):
        window_days(path)
