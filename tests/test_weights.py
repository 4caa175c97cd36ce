"""Scores to weights: the transform of params, on plain arrays; the train stage's join of a window's weights."""
import numpy as np
import pytest

from pipeline.importance.weights import normalise, to_weights, transform

BASE = {"temperature": 1.0, "clip": [0.1, 3.0]}


def test_weights_have_mean_one_per_group_and_follow_the_score():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=1000)
    groups = rng.integers(0, 2, size=1000)
    w = to_weights(scores, 1.0, (0.1, 3.0), groups)
    for g in (0, 1):
        assert w[groups == g].mean() == pytest.approx(1.0)
        order = np.argsort(scores[groups == g])
        assert (np.diff(w[groups == g][order]) >= -1e-12).all()
    assert w.min() >= 0


def test_clip_bounds_the_spread():
    w = to_weights(np.array([-100.0, 0.0, 0.0, 0.0, 100.0]), 1.0, (0.5, 2.0))
    assert w.max() / w.min() <= 4.0 + 1e-9


def test_rank_and_zscore_normalise_within_groups():
    scores = np.array([1.0, 5.0, 3.0, 100.0, 200.0])
    groups = np.array([0, 0, 0, 1, 1])
    assert normalise(scores, "rank", groups).tolist() == pytest.approx([1 / 3, 1.0, 2 / 3, 0.5, 1.0])
    z = normalise(scores, "zscore", groups)
    assert z[:3].mean() == pytest.approx(0) and z[3:].mean() == pytest.approx(0)
    with pytest.raises(ValueError, match="normalise"):
        normalise(scores, "softmax", groups)


def test_drop_lowest_percent_zeroes_the_tail():
    scores = np.arange(100, dtype=float)
    w = transform(scores, {**BASE, "drop_lowest_percent": 10})
    assert (w[:10] == 0).all() and (w[10:] > 0).all() and w.mean() == pytest.approx(1.0)


def test_drop_lowest_percent_drops_the_same_share_of_each_group():
    # The clicks (group 1) score lower than every non-click: a drop across groups would take only clicks.
    scores = np.r_[np.arange(100, 200, dtype=float), np.arange(20, dtype=float)]
    groups = np.r_[np.zeros(100, dtype=int), np.ones(20, dtype=int)]
    w = transform(scores, {**BASE, "drop_lowest_percent": 10}, groups)
    assert (w[:10] == 0).all() and (w[10:100] > 0).all()
    assert (w[100:102] == 0).all() and (w[102:] > 0).all()


def test_sessions_with_the_lowest_mean_score_get_zero_weight():
    scores = np.array([5.0, 5.0, 4.0, 4.0, -9.0, -8.0])
    sessions = np.array(["a", "a", "b", "b", "bot", "bot"])
    w = transform(scores, {**BASE, "drop_sessions_percent": 34}, sessions=sessions)
    assert (w[4:] == 0).all() and (w[:4] > 0).all() and w.mean() == pytest.approx(1.0)


def test_dropping_everything_is_refused():
    with pytest.raises(ValueError, match="every row weight 0"):
        transform(np.ones(5), {**BASE, "drop_sessions_percent": 100}, sessions=np.array(list("aaaaa")))


def three_blobs(rng, sizes=(300, 300, 30)):
    centres = np.eye(3, 8) * 20
    vectors = np.vstack([centres[i] + rng.normal(size=(n, 8)) for i, n in enumerate(sizes)])
    blob = np.repeat(np.arange(3), sizes)
    return vectors, blob


def test_cluster_representatives_keep_the_best_of_every_cluster_even_a_low_scored_one():
    rng = np.random.default_rng(1)
    vectors, blob = three_blobs(rng)
    # The small blob scores lowest overall: a global drop would remove it entirely.
    scores = rng.normal(size=len(blob)) - 10 * (blob == 2)
    cfg = {**BASE, "cluster_representatives": {"clusters": 3, "keep_percent": 50}}
    w = transform(scores, cfg, vectors=vectors, seed=0)
    for b in range(3):
        rows = np.flatnonzero(blob == b)
        kept = rows[w[rows] > 0]
        assert len(kept) == int(np.ceil(len(rows) / 2))
        # the kept rows are the cluster's best-scored half
        assert scores[kept].min() >= np.median(scores[rows]) - 1e-12
    assert w.mean() == pytest.approx(1.0)
    global_drop = transform(scores, {**BASE, "drop_lowest_percent": 50})
    assert (global_drop[blob == 2] == 0).all()


def test_cluster_representatives_are_seeded_and_need_vectors():
    rng = np.random.default_rng(2)
    vectors, blob = three_blobs(rng)
    scores = rng.normal(size=len(blob))
    cfg = {**BASE, "cluster_representatives": {"clusters": 5, "keep_percent": 30}}
    np.testing.assert_array_equal(transform(scores, cfg, vectors=vectors, seed=4),
                                  transform(scores, cfg, vectors=vectors, seed=4))
    with pytest.raises(ValueError, match="needs the rows' embeddings"):
        transform(scores, cfg)
    with pytest.raises(ValueError, match="keep_percent must be in"):
        transform(scores, {**BASE, "cluster_representatives": {"clusters": 5, "keep_percent": 0}}, vectors=vectors)
    off = transform(scores, {**BASE, "cluster_representatives": {"clusters": 0, "keep_percent": 30}})
    assert (off > 0).all()


def _scores_file(path, event_ids, weights):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"event_id": event_ids, "weight": np.asarray(weights, dtype=np.float64)}), path)
    return path


def test_the_window_weights_join_each_event_to_its_own_weight(tmp_path):
    import pandas as pd

    from pipeline.stages.train import aligned_weights

    rng = np.random.default_rng(3)
    ids = [f"e{i}" for i in range(500)]
    weights = rng.uniform(0.1, 3.0, size=500)
    scores = _scores_file(tmp_path / "a.parquet", ids, weights)
    wanted = pd.Series(rng.permutation(ids)[:300])
    expected = wanted.to_frame("event_id").merge(pd.DataFrame({"event_id": ids, "weight": weights}),
                                                 on="event_id", how="left")["weight"].to_numpy()
    assert np.array_equal(aligned_weights(wanted, scores), expected)


def test_the_window_weights_refuse_a_missing_event_and_a_duplicate_one(tmp_path):
    import pandas as pd

    from pipeline.stages.train import aligned_weights

    first = _scores_file(tmp_path / "a.parquet", ["e1", "e2"], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"no weight for 1 training events, e\.g\. e9"):
        aligned_weights(pd.Series(["e1", "e9"]), first)
    twice = _scores_file(tmp_path / "b.parquet", ["e1", "e2", "e3", "e2"], [1.0, 2.0, 1.5, 0.5])
    with pytest.raises(ValueError, match="an event_id has more than one weight"):
        aligned_weights(pd.Series(["e1", "e3"]), twice)


def test_the_window_weights_join_each_day_with_its_own_scores(tmp_path):
    import pandas as pd

    from pipeline.stages.train import window_weights

    days = ["2026-11-01", "2026-11-02"]
    # The same event_id on both days: each row must take its own day's weight.
    impressions = pd.DataFrame({"event_id": ["a", "b", "c", "a", "d"],
                                "day": pd.Categorical.from_codes([0, 0, 0, 1, 1], days)})
    files = [_scores_file(tmp_path / "1.parquet", ["c", "a", "b"], [3.0, 1.0, 2.0]),
             _scores_file(tmp_path / "2.parquet", ["d", "a"], [5.0, 4.0])]
    rows = np.array([4, 0, 3, 2])
    assert window_weights(impressions, rows, days, files).tolist() == [5.0, 1.0, 4.0, 3.0]
    with pytest.raises(ValueError, match="2 training rows are of no window day with a scores file"):
        window_weights(impressions, rows, days[:1], files[:1])
