"""Scores to weights: the transform of params, on plain arrays."""
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


def test_sessions_with_the_lowest_mean_score_get_zero_weight():
    scores = np.array([5.0, 5.0, 4.0, 4.0, -9.0, -8.0])
    sessions = np.array(["a", "a", "b", "b", "bot", "bot"])
    w = transform(scores, {**BASE, "drop_sessions_percent": 34}, sessions=sessions)
    assert (w[4:] == 0).all() and (w[:4] > 0).all() and w.mean() == pytest.approx(1.0)


def test_dropping_everything_is_refused():
    with pytest.raises(ValueError, match="every row weight 0"):
        transform(np.ones(5), {**BASE, "drop_sessions_percent": 100}, sessions=np.array(list("aaaaa")))
