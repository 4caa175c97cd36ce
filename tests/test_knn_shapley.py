"""KNN-Shapley: the exact recursion against brute-force Shapley values, the truncated recursion within its
1/M bound of the exact one, the position-grouped search against the plain one, the random projection,
the knobs, and scoring a subset of rows (a shard) against scoring every row."""
import copy
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from conftest import tiny_params
from pipeline.model.features import Features
from pipeline.importance.estimators import knn_shapley
from pipeline.importance import registry
from pipeline.importance.sharding import Shard, shard_rows
from test_behaviour_estimators import synthetic_context


def brute_force_shapley(points, labels, val_points, val_labels, k):
    """Shapley values by enumerating every permutation, for the KNN utility of Jia et al. 2019:
    U(S) = mean over validation points of (1/K) * #(of the min(K, |S|) nearest in S, those with its label)."""
    n = len(points)

    def utility(subset):
        if not subset:
            return 0.0
        total = 0.0
        for v, y in zip(val_points, val_labels):
            d = [(float(np.linalg.norm(points[i] - v)), i) for i in subset]
            nearest = [i for _, i in sorted(d)[:k]]
            total += sum(labels[i] == y for i in nearest) / k
        return total / len(val_points)

    values = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        before = []
        for i in perm:
            values[i] += utility(before + [i]) - utility(before)
            before.append(i)
    return values / len(perms)


def random_problem(seed, n=60, n_val=15, dim=3, groups=1):
    g = torch.Generator().manual_seed(seed)
    return dict(points=torch.randn(n, dim, generator=g, dtype=torch.float64),
                labels=torch.randint(0, 2, (n,), generator=g),
                val_points=torch.randn(n_val, dim, generator=g, dtype=torch.float64),
                val_labels=torch.randint(0, 2, (n_val,), generator=g),
                groups=torch.randint(0, groups, (n,), generator=g),
                val_groups=torch.randint(0, groups, (n_val,), generator=g))


def values(problem, k, neighbours=0, group_distance=0.0, max_pairs_per_block=10_000):
    p = problem
    return knn_shapley.knn_shapley(p["points"], p["labels"], p["val_points"], p["val_labels"], k,
                                   max_pairs_per_block, neighbours, p["groups"], p["val_groups"], group_distance)


def test_exact_recursion_matches_brute_force_permutations():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(5, 2))
    labels = np.array([1, 0, 1, 1, 0])
    val_points = rng.normal(size=(2, 2))
    val_labels = np.array([1, 0])
    expected = brute_force_shapley(points, labels, val_points, val_labels, k=2)
    got = knn_shapley.knn_shapley(torch.tensor(points), torch.tensor(labels), torch.tensor(val_points),
                                  torch.tensor(val_labels), k=2, max_pairs_per_block=1_000)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    # Efficiency: the values add up to the utility of the whole set.
    assert got.sum().item() == pytest.approx(sum(
        sum(labels[i] == y for i in np.argsort(np.linalg.norm(points - v, axis=1))[:2]) / 2
        for v, y in zip(val_points, val_labels)) / 2)


@pytest.mark.parametrize("neighbours", [3, 8, 20, 45])
def test_truncated_values_are_within_one_over_m_of_the_exact_ones_for_every_validation_point(neighbours):
    problem = random_problem(seed=neighbours)
    for v in range(len(problem["val_points"])):
        one = dict(problem, val_points=problem["val_points"][v:v + 1], val_labels=problem["val_labels"][v:v + 1],
                   val_groups=problem["val_groups"][v:v + 1])
        exact, truncated = values(one, k=3), values(one, k=3, neighbours=neighbours)
        m = max(3, neighbours)
        assert (truncated - exact).abs().max().item() <= 1 / m + 1e-12
        # The m nearest move together: the same shift for all of them.
        nearest = torch.argsort(torch.cdist(one["val_points"], one["points"])[0])[:m]
        shift = truncated[nearest] - exact[nearest]
        torch.testing.assert_close(shift, shift[:1].expand(m), rtol=0, atol=1e-12)


def test_truncating_at_every_point_is_the_exact_recursion():
    problem = random_problem(seed=7)
    torch.testing.assert_close(values(problem, k=4, neighbours=60), values(problem, k=4), rtol=0, atol=1e-15)
    torch.testing.assert_close(values(problem, k=4, neighbours=500), values(problem, k=4), rtol=0, atol=1e-15)


@pytest.mark.parametrize("neighbours", [0, 12])
def test_blocks_do_not_change_the_values(neighbours):
    problem = random_problem(seed=4, n=40, n_val=13, groups=3)
    whole = values(problem, 3, neighbours, group_distance=0.5, max_pairs_per_block=10_000)
    one_at_a_time = values(problem, 3, neighbours, group_distance=0.5, max_pairs_per_block=1)
    torch.testing.assert_close(whole, one_at_a_time, rtol=0, atol=1e-12)


@pytest.mark.parametrize("weight", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("neighbours", [0, 10, 40, 150])
def test_position_groups_give_the_values_of_a_scaled_one_hot(weight, neighbours):
    """Small weights send many validation points past their own group, large ones keep them in it; group 4
    has fewer points than the larger M."""
    problem = random_problem(seed=9, n=400, n_val=60, dim=4, groups=5)
    problem["groups"][problem["groups"] == 4] = torch.arange(int((problem["groups"] == 4).sum())) % 4
    problem["groups"][:20] = 4

    def with_one_hot(g):
        return weight * torch.nn.functional.one_hot(g, 5).to(torch.float64)

    plain = dict(problem, points=torch.cat([problem["points"], with_one_hot(problem["groups"])], dim=1),
                 val_points=torch.cat([problem["val_points"], with_one_hot(problem["val_groups"])], dim=1),
                 groups=None, val_groups=None)
    grouped = values(problem, 5, neighbours, group_distance=2 * weight ** 2, max_pairs_per_block=500)
    torch.testing.assert_close(grouped, values(plain, 5, neighbours, max_pairs_per_block=500), rtol=0, atol=1e-12)


@pytest.mark.parametrize("neighbours", [0, 15])
def test_a_mislabelled_point_is_valued_below_its_neighbours(neighbours):
    rng = np.random.default_rng(5)
    points = np.concatenate([rng.normal(0, 0.3, (20, 2)), rng.normal(3, 0.3, (20, 2))])
    labels = np.repeat([0, 1], 20)
    labels[0] = 1  # a click among non-clicks
    val_points = np.concatenate([rng.normal(0, 0.3, (10, 2)), rng.normal(3, 0.3, (10, 2))])
    got = knn_shapley.knn_shapley(torch.tensor(points), torch.tensor(labels), torch.tensor(val_points),
                                  torch.tensor(np.repeat([0, 1], 10)), 5, 1_000, neighbours).numpy()
    assert got[0] < 0 < got[1:20].min()


# Through the registry, on a small synthetic log.

def knn_params(**knobs) -> dict:
    params = tiny_params()
    params["importance"]["estimators"]["knn_shapley"].update(knobs)
    return params


def test_is_registered_as_a_shardable_forward_only_estimator():
    estimator = registry.get("knn_shapley")
    assert estimator.shardable and estimator.cost_class == "forward-only"


def test_scoring_a_subset_of_rows_gives_the_scores_of_scoring_every_row():
    ctx = synthetic_context(seed=21)
    every = registry.get("knn_shapley").score(ctx).set_index("event_id")["score"]
    n = len(ctx.data.impressions)
    shards = [shard_rows(ctx.data.impressions["session_id"], Shard(i, 3)) for i in range(3)]
    subsets = shards + [np.arange(0, n, 7), ctx.data.train_index[::5], ctx.data.holdout_index[:3]]
    for rows in subsets:
        ctx.rows = rows
        part = registry.get("knn_shapley").score(ctx)
        assert part["event_id"].tolist() == ctx.data.impressions["event_id"].iloc[rows].tolist()
        np.testing.assert_array_equal(part["score"].to_numpy(), every.loc[part["event_id"]].to_numpy())


def test_estimator_scores_are_within_the_bound_of_the_exact_ones():
    """Without the projection the truncation is the only approximation: each score (a mean value times
    the slice size) is within slice size / M of the exact one."""
    exact_ctx = synthetic_context(seed=22, params=knn_params(neighbours=0, projection_dim=0))
    exact = registry.get("knn_shapley").score(exact_ctx)["score"].to_numpy()
    m = 30
    truncated = registry.get("knn_shapley").score(
        synthetic_context(seed=22, params=knn_params(neighbours=m, projection_dim=0)))["score"].to_numpy()
    data = exact_ctx.data
    for index in (data.train_index, data.holdout_index):
        assert np.abs(truncated[index] - exact[index]).max() <= len(index) / m + 1e-9
    assert np.abs(truncated - exact).max() > 0  # the truncation did change something


def test_projection_is_the_same_whether_rows_hold_vectors_or_text_indices():
    ctx = synthetic_context(seed=23)
    x = ctx.data.x
    texts, index = torch.unique(torch.cat([x.query, x.title]), dim=0, return_inverse=True)
    n = len(x)
    ctx_indices = copy.copy(ctx)
    ctx_indices.data = copy.copy(ctx.data)
    ctx_indices.data.x = Features(index[:n], index[n:], x.dense, x.position, x.click, x.purchase, texts=texts)
    knobs = knn_shapley.read_knobs(ctx.params["importance"]["estimators"]["knn_shapley"])
    rows = np.arange(n)[::-3]  # any rows, in any order
    for mode in knn_shapley.TEXT_FEATURES:
        mode_knobs = dataclasses.replace(knobs, text_features=mode)
        from_vectors = knn_shapley.embed_text(ctx, mode_knobs, rows)
        assert from_vectors.shape == (len(rows), knobs.projection_dim)
        torch.testing.assert_close(knn_shapley.embed_text(ctx_indices, mode_knobs, rows), from_vectors, rtol=1e-5,
                                   atol=1e-5)


def test_projection_keeps_distances_roughly():
    ctx = synthetic_context(seed=24, params=knn_params(projection_dim=256))
    knobs = knn_shapley.read_knobs(ctx.params["importance"]["estimators"]["knn_shapley"])
    rows = np.arange(200)
    projected = knn_shapley.embed_text(ctx, knobs, rows)
    full = knn_shapley.embed_text(ctx, dataclasses.replace(knobs, projection_dim=0), rows)
    far = torch.cdist(full, full) > 0.5
    ratio = torch.cdist(projected, projected)[far] / torch.cdist(full, full)[far]
    assert 0.8 < ratio.median().item() < 1.2 and ratio.std().item() < 0.15


def test_needs_a_holdout_slice():
    ctx = synthetic_context(seed=17)
    ctx.data.holdout = np.zeros(len(ctx.data.impressions), dtype=bool)
    with pytest.raises(ValueError, match="holdout slice"):
        registry.get("knn_shapley").score(ctx)


def test_caps_the_validation_points():
    scores = registry.get("knn_shapley").score(synthetic_context(seed=18, params=knn_params(max_validation=50)))
    assert np.isfinite(scores["score"]).all() and scores["score"].std() > 0
    assert math.isfinite(float(scores["score"].sum()))


@pytest.mark.parametrize("key, value", [("k", 0), ("neighbours", -1), ("projection_dim", -2),
                                        ("text_features", "sum"), ("position_weight", -1.0),
                                        ("position_weight", float("nan")), ("max_validation", -1),
                                        ("max_pairs_per_block", 0)])
def test_a_bad_knob_is_a_clear_error(key, value):
    ctx = synthetic_context(seed=19, params=knn_params(**{key: value}))
    with pytest.raises(ValueError, match=f"importance.estimators.knn_shapley.{key} "):
        registry.get("knn_shapley").score(ctx)
