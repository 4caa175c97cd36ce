"""Unit tests of the behaviour-based estimators: the position-based click model, position IPW and
collaborative agreement, on plain arrays and on small synthetic logs (KNN-Shapley: test_knn_shapley.py)."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import tiny_params
from pipeline.model.dataset import DayData
from pipeline.model.features import DENSE_FEATURES, Features, holdout_mask
from pipeline.importance.estimators import click_model, collaborative, position_ipw
from pipeline.importance import registry
from pipeline.importance.registry import Context

NAMES = ("click_model", "position_ipw", "collaborative", "knn_shapley")
TRUE_EXAMINATION = np.arange(1, 11, dtype=np.float64) ** -0.8  # position 1 examined for sure


def pbm_log(rng: np.random.Generator, n: int, n_items: int = 150):
    """Impressions from a PBM with items shown at uniformly random positions, so the two factors separate."""
    attractiveness = rng.uniform(0.1, 0.9, n_items)
    item = rng.integers(0, n_items, n)
    position = rng.integers(1, 11, n)
    click = (rng.random(n) < TRUE_EXAMINATION[position - 1] * attractiveness[item]).astype(np.float64)
    return position, item, click, attractiveness


def fit(position, item, click, n_items: int = 150, **kw):
    options = dict(n_pairs=n_items, n_items=n_items, max_position=10, iterations=500, tol=1e-10,
                   item_prior_strength=1.0, pair_prior_strength=1.0)
    options.update(kw)
    return click_model.fit_pbm(position, item, item, click, **options)


# Click model.

def test_pbm_em_recovers_examination_probabilities():
    position, item, click, attractiveness = pbm_log(np.random.default_rng(0), 60_000)
    model = fit(position, item, click)
    np.testing.assert_allclose(model.examination[1:], TRUE_EXAMINATION, atol=0.05)
    assert np.corrcoef(model.attractiveness, attractiveness)[0, 1] > 0.9
    # A click-rate-by-position curve mixes in nothing else here, but the fit must not just copy it:
    # without anchoring the scale is free, with it the top position is examined for sure.
    assert model.examination[1] == pytest.approx(1.0)


def test_uniform_random_clicking_sessions_are_less_likely_than_position_consistent_ones():
    rng = np.random.default_rng(1)
    position, item, click, attractiveness = pbm_log(rng, 40_000)
    model = fit(position, item, click)
    # 200 sessions of 10 impressions at positions 1..10: half follow the PBM, half click at random.
    sessions, per = 200, 10
    s_pos = np.tile(np.arange(1, per + 1), sessions)
    s_item = rng.integers(0, 150, sessions * per)
    bot = np.repeat(np.arange(sessions) % 2 == 1, per)
    pbm_click = rng.random(sessions * per) < TRUE_EXAMINATION[s_pos - 1] * attractiveness[s_item]
    bot_click = rng.random(sessions * per) < 0.35
    s_click = np.where(bot, bot_click, pbm_click).astype(np.float64)
    p = click_model.click_probability(model, s_pos, s_item)
    per_row = click_model.session_log_likelihood(p, s_click, np.repeat(np.arange(sessions), per))
    per_session = per_row[::per]
    is_bot = np.arange(sessions) % 2 == 1
    assert per_session[is_bot].mean() < per_session[~is_bot].mean() - 0.1
    assert roc_auc_score(is_bot, -per_session) > 0.85


def test_one_session_clicking_the_bottom_is_less_likely_than_one_clicking_the_top():
    position, item, click, _ = pbm_log(np.random.default_rng(2), 20_000)
    model = fit(position, item, click)
    pos = np.tile(np.arange(1, 11), 2)
    clicks = np.zeros(20)
    clicks[[0, 1]] = 1    # session 0 clicks positions 1 and 2
    clicks[[18, 19]] = 1  # session 1 clicks positions 9 and 10, the same items
    items = np.tile(np.arange(10), 2)
    ll = click_model.session_log_likelihood(click_model.click_probability(model, pos, items), clicks,
                                            np.repeat([0, 1], 10))
    assert ll[0] > ll[10]


def test_fit_pbm_rejects_a_log_without_clicks():
    with pytest.raises(ValueError, match="no clicks"):
        fit(np.array([1, 2, 3]), np.array([0, 1, 2]), np.zeros(3))


# Collaborative agreement.

def co_click_clusters(rng, users_per_cluster=15):
    """Users clicking 4 of the 10 items of their cluster (clusters: items 0-9, 10-19, 20-29)."""
    user, item = [], []
    for cluster in range(3):
        for u in range(users_per_cluster):
            uid = cluster * users_per_cluster + u
            for i in rng.choice(10, 4, replace=False):
                user.append(uid)
                item.append(cluster * 10 + i)
    return np.array(user), np.array(item)


def agreement_of(user_id, items, base_user, base_item, n_users, n_items=40):
    user = np.concatenate([base_user, np.full(len(items), user_id)])
    item = np.concatenate([base_item, items])
    own = np.r_[np.zeros(len(base_user)), np.ones(len(items))].astype(bool)
    a = collaborative.click_agreement(user, item, user, item, np.ones(len(user)), np.zeros(len(user)),
                                      n_users=n_users, n_keys=n_items, beta=1e-6, user_batch=7)
    return a[own]


def test_random_clicks_agree_less_than_clicks_within_a_co_click_cluster():
    base_user, base_item = co_click_clusters(np.random.default_rng(6))
    n_users = base_user.max() + 2
    within = agreement_of(n_users - 1, np.array([0, 1, 2, 3, 4]), base_user, base_item, n_users)
    scattered = agreement_of(n_users - 1, np.array([0, 13, 27, 33, 38]), base_user, base_item, n_users)
    assert within.min() > scattered.max()
    assert within.mean() > 0.2 > scattered.mean()


def test_a_users_own_co_clicks_do_not_vouch_for_themselves():
    # Items 0 and 13 are clicked by others but never together, 30 and 31 by nobody else: only this
    # user links them, so they agree 0.
    base_user, base_item = co_click_clusters(np.random.default_rng(7))
    n_users = base_user.max() + 2
    np.testing.assert_allclose(agreement_of(n_users - 1, np.array([0, 13, 30, 31]), base_user, base_item, n_users),
                               0.0)


def test_similarity_sums_match_leave_one_user_out_cosines_computed_directly():
    rng = np.random.default_rng(8)
    n_users, n_keys = 9, 6
    click_user, click_key = rng.integers(0, n_users, 40), rng.integers(0, n_keys, 40)
    # Rows to score: every click (own) and a few impressions that are not clicks.
    user = np.r_[click_user, rng.integers(0, n_users, 15)]
    key = np.r_[click_key, rng.integers(0, n_keys, 15)]
    own = np.r_[np.ones(40), np.zeros(15)]
    sums, m = collaborative.similarity_sums(click_user, click_key, user, key, own, n_users=n_users, n_keys=n_keys,
                                            user_batch=4)
    counts = np.zeros((n_users, n_keys))
    np.add.at(counts, (click_user, click_key), 1)
    for r in range(len(user)):
        u, i = user[r], key[r]
        others = counts[u].copy()
        others[i] -= own[r]
        rest = np.delete(counts > 0, u, axis=0).astype(float)
        norms = np.sqrt(rest.sum(axis=0))
        sim = np.array([1.0 if j == i else (rest[:, i] @ rest[:, j] / (norms[i] * norms[j])
                                            if norms[i] * norms[j] > 0 else 0.0) for j in range(n_keys)])
        assert sums[r] == pytest.approx(others @ sim, abs=1e-12)
        assert m[r] == others.sum()


def test_a_user_with_a_single_click_falls_back_to_the_prior():
    user, item = np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1])
    a = collaborative.click_agreement(user, item, user, item, np.ones(4), np.array([0.3, 0.0, 0.0, 0.7]),
                                      n_users=3, n_keys=2, beta=2.0, user_batch=2)
    assert a[0] == pytest.approx(0.3) and a[3] == pytest.approx(0.7)


def test_popularity_rate_leaves_the_user_out():
    item = np.array([0, 0, 0, 1])
    user = np.array([0, 0, 1, 2])
    click = np.array([1, 1, 0, 0])
    train = np.ones(4, dtype=bool)
    rate = collaborative.popularity_rate(item, click, train, user, prior_strength=0.0)
    # User 0's own two clicks on item 0 do not count for them: the other user saw it without clicking.
    assert rate[0] == 0.0 and rate[2] > 0


# Position IPW.

def test_ipw_uses_the_logged_propensity_when_valid_and_the_click_model_otherwise():
    examination = np.array([0.0, 1.0, 0.5, 0.25, 0.1])
    logged = np.array([0.5, np.nan, 0.0, 1.5, 0.01, 0.2])
    position = np.array([1, 2, 3, 4, 2, 4])
    factor = position_ipw.ipw_from(logged, position, examination, (1.0, 8.0))
    np.testing.assert_allclose(factor, [2.0, 2.0, 4.0, 8.0, 8.0, 5.0])
    # Forcing the click model ignores the log; forcing the log refuses rows it lacks.
    np.testing.assert_allclose(position_ipw.ipw_from(logged, position, examination, (1.0, 8.0), "pbm"),
                               [1.0, 2.0, 4.0, 8.0, 2.0, 8.0])
    with pytest.raises(ValueError, match="no valid propensity"):
        position_ipw.ipw_from(logged, position, examination, (1.0, 8.0), "logged")


def test_ipw_respects_the_clip_and_clicked_only():
    examination = np.array([0.0, 1.0, 0.001])
    factor = position_ipw.ipw_from(np.full(3, np.nan), np.array([1, 2, 2]), examination, (1.5, 30.0),
                                   clicked=np.array([1, 1, 0]))
    np.testing.assert_allclose(factor, [1.5, 30.0, 1.0])
    with pytest.raises(ValueError, match="clip"):
        position_ipw.ipw_from(np.full(3, np.nan), np.array([1, 2, 2]), examination, (0.0, 3.0))


# On a small synthetic log, through the registry.

def synthetic_context(seed: int = 0, bot_share: float = 0.2, params: dict | None = None,
                      propensity_known: float = 0.5) -> Context:
    """Users who prefer one of 4 item clusters, each session shown 2 lists of 10 mostly from its
    cluster and clicking by a PBM; bot sessions click 35% of what they are shown at random."""
    rng = np.random.default_rng(seed)
    n_items, n_sessions = 40, 80
    rows = []
    for s in range(n_sessions):
        cluster, bot = s % 4, rng.random() < bot_share
        for r in range(2):
            items = np.concatenate([rng.choice(np.arange(cluster * 10, cluster * 10 + 10), 7, replace=False),
                                    rng.choice(n_items, 3, replace=False)])
            items = rng.permutation(np.unique(items))
            search = r == 0
            for p, i in enumerate(items, start=1):
                attract = 0.7 if i // 10 == cluster else 0.05
                click = rng.random() < 0.35 if bot else rng.random() < p ** -0.8 * attract
                rows.append(dict(
                    event_id=f"e{len(rows):05d}", ts=pd.Timestamp("2026-11-01", tz="UTC") + pd.Timedelta(
                        seconds=60 * (2 * s + r)), request_id=f"r{s:03d}-{r}", user_id=f"u{s:03d}",
                    session_id=f"s{s:03d}", surface="search" if search else "recommend",
                    query=f"cluster {cluster}" if search else None, item_id=f"i{i:03d}", position=p,
                    clicked=int(click), purchased=0,
                    propensity=float(rng.uniform(0.05, 1.0)) if rng.random() < propensity_known else np.nan,
                    price=10.0, is_bot=bot))
    impressions = pd.DataFrame(rows)
    truth = impressions.pop("is_bot").to_numpy()
    catalog = pd.DataFrame({"item_id": [f"i{i:03d}" for i in range(n_items)],
                            "title": [f"item {i}" for i in range(n_items)],
                            "category": [f"C{i // 10}" for i in range(n_items)], "brand": None, "price": 10.0})
    g = torch.Generator().manual_seed(seed)
    item_vec = torch.nn.functional.normalize(torch.randn(n_items, 8, generator=g), dim=1)
    query_vec = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    item_code = torch.tensor(impressions["item_id"].str[1:].astype(int).to_numpy())
    cluster = torch.tensor(impressions["user_id"].str[1:].astype(int).to_numpy() % 4)
    is_search = torch.tensor((impressions["surface"] == "search").to_numpy())
    n = len(impressions)
    x = Features(
        query=torch.where(is_search[:, None], query_vec[cluster], torch.zeros(n, 8)),
        title=item_vec[item_code], dense=torch.zeros(n, len(DENSE_FEATURES)),
        position=torch.tensor(impressions["position"].to_numpy()),
        click=torch.tensor(impressions["clicked"].to_numpy(), dtype=torch.float32), purchase=torch.zeros(n))
    params = copy.deepcopy(params or tiny_params())
    params["ranker"]["max_position"] = 10
    data = DayData(impressions, catalog, x, holdout_mask(impressions, 0.2))
    context = Context(data, params, seed=seed, device="cpu")
    context.is_bot = truth  # for the tests only
    return context


@pytest.mark.parametrize("name", NAMES)
def test_estimators_are_deterministic_and_score_every_row(name):
    estimator = registry.get(name)
    assert estimator.cost_class == "forward-only"
    ctx = synthetic_context(seed=11)
    first, second = estimator.score(ctx), estimator.score(synthetic_context(seed=11))
    assert list(first.columns[:2]) == ["event_id", "score"] and len(first.columns) > 2  # evidence beside it
    assert np.isfinite(first.iloc[:, 2:].to_numpy()).all()
    assert first["event_id"].tolist() == ctx.data.impressions["event_id"].tolist()
    assert np.isfinite(first["score"]).all()
    np.testing.assert_array_equal(first["score"].to_numpy(), second["score"].to_numpy())


@pytest.mark.parametrize("name", ["click_model", "position_ipw"])
def test_bot_sessions_score_lower(name):
    ctx = synthetic_context(seed=12)
    scores = registry.get(name).score(ctx)["score"].to_numpy()
    assert roc_auc_score(ctx.is_bot, -scores) > 0.6


def test_bot_clicks_agree_less_than_clicks_within_a_cluster():
    params = tiny_params()
    params["importance"]["estimators"]["collaborative"].update(item_weight=1.0, category_weight=0.0)
    ctx = synthetic_context(seed=13, params=params)
    scores = registry.get("collaborative").score(ctx)["score"].to_numpy()
    clicked = ctx.data.impressions["clicked"].to_numpy() == 1
    assert scores[clicked & ctx.is_bot].mean() < scores[clicked & ~ctx.is_bot].mean()


def test_ipw_factor_reads_the_logged_propensity_and_the_click_model_elsewhere():
    params = tiny_params()
    params["importance"]["estimators"]["position_ipw"].update(clip=[1.0, 50.0], clicked_only=False)
    ctx = synthetic_context(seed=14, params=params)
    factor = position_ipw.ipw_factor(ctx)
    logged = ctx.data.impressions["propensity"].to_numpy()
    known = np.isfinite(logged)
    assert known.any() and (~known).any()
    np.testing.assert_allclose(factor[known], np.clip(1 / logged[known], 1.0, 50.0))
    model, coded = click_model.fit_context(ctx)
    np.testing.assert_allclose(factor[~known], np.clip(1 / model.examination[coded.position[~known]], 1.0, 50.0))
    assert factor.min() >= 1.0 and factor.max() <= 50.0


def test_position_ipw_score_is_the_click_model_score_plus_the_weighted_log_factor():
    ctx = synthetic_context(seed=15)
    weight = ctx.params["importance"]["estimators"]["position_ipw"]["log_factor_weight"]
    combined = registry.get("position_ipw").score(ctx)["score"].to_numpy()
    quality = registry.get("click_model").score(ctx)["score"].to_numpy()
    np.testing.assert_allclose(combined, quality + weight * np.log(position_ipw.ipw_factor(ctx)))


@pytest.mark.parametrize("name", NAMES)
def test_a_training_slice_without_clicks_is_a_clear_error(name):
    ctx = synthetic_context(seed=16)
    train = ctx.data.train_index
    ctx.data.impressions.loc[train, "clicked"] = 0
    ctx.data.x.click[torch.as_tensor(train)] = 0.0
    with pytest.raises(ValueError, match="no clicks"):
        registry.get(name).score(ctx)
