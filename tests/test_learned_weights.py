"""The learned-weights estimator (meta-reweighting against a clean validation slice): the meta
gradient against plain autograd and a hand-worked case, the normalisation, the validation slices,
determinism, sharding, and clear errors on bad knobs and bad logs. Noise detection on the simulated
log is checked with every other estimator in test_estimators.py."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from conftest import tiny_params
from pipeline.model import ranker
from pipeline.model.dataset import DayData
from pipeline.model.features import DENSE_FEATURES, Features, holdout_mask
from pipeline.importance.estimators import learned_weights as lw
from pipeline.importance import registry
from pipeline.importance.registry import Context

TEXT_DIM = 8


def synthetic_log(seed: int = 0, bot_share: float = 0.2) -> tuple[DayData, np.ndarray]:
    """Sessions of users who like one of 4 item clusters, 2 lists of 10 each, clicks by a
    position-based model, a purchase after some clicks; bot sessions click 35% of what they see at
    random and never buy. Returns the log and which rows are bots'."""
    rng = np.random.default_rng(seed)
    n_items, n_sessions = 40, 100
    rows = []
    for s in range(n_sessions):
        cluster, bot = s % 4, rng.random() < bot_share
        for r in range(2):
            items = rng.permutation(np.unique(np.concatenate([
                rng.choice(np.arange(cluster * 10, cluster * 10 + 10), 7, replace=False),
                rng.choice(n_items, 3, replace=False)])))
            for p, i in enumerate(items, start=1):
                attract = 0.7 if i // 10 == cluster else 0.05
                click = rng.random() < (0.35 if bot else p ** -0.8 * attract)
                rows.append(dict(event_id=f"e{len(rows):05d}",
                                 ts=pd.Timestamp("2026-11-01", tz="UTC") + pd.Timedelta(seconds=60 * (2 * s + r)),
                                 request_id=f"r{s:03d}-{r}", user_id=f"u{s:03d}", session_id=f"s{s:03d}",
                                 surface="search", query=f"cluster {cluster}", item_id=f"i{i:03d}", position=p,
                                 clicked=int(click), purchased=int(click and not bot and rng.random() < 0.4),
                                 price=10.0, is_bot=bot, cluster=cluster))
    impressions = pd.DataFrame(rows)
    is_bot = impressions.pop("is_bot").to_numpy()
    cluster = torch.tensor(impressions.pop("cluster").to_numpy())
    g = torch.Generator().manual_seed(seed)
    item_vec = F.normalize(torch.randn(n_items, TEXT_DIM, generator=g), dim=1)
    query_vec = F.normalize(torch.randn(4, TEXT_DIM, generator=g), dim=1)
    item = torch.tensor(impressions["item_id"].str[1:].astype(int).to_numpy())
    n = len(impressions)
    x = Features(query=query_vec[cluster], title=item_vec[item], dense=torch.zeros(n, len(DENSE_FEATURES)),
                 position=torch.tensor(impressions["position"].to_numpy()),
                 click=torch.tensor(impressions["clicked"].to_numpy(), dtype=torch.float32),
                 purchase=torch.tensor(impressions["purchased"].to_numpy(), dtype=torch.float32))
    catalog = pd.DataFrame({"item_id": [f"i{i:03d}" for i in range(n_items)],
                            "title": [f"item {i}" for i in range(n_items)]})
    return DayData(impressions, catalog, x, holdout_mask(impressions, 0.2)), is_bot


def make_params(**knobs) -> dict:
    params = copy.deepcopy(tiny_params())
    params["ranker"].update(hidden=16, max_position=10)
    params["importance"]["estimators"][lw.NAME].update(
        dict(validation="click_model", validation_fraction=0.3, validation_batch_size=256, batch_size=256,
             epochs=2), **knobs)
    return params


def context(day=None, params=None, seed=3, rows=None) -> Context:
    return Context(day or synthetic_log()[0], params or make_params(), seed, "cpu", rows)


def test_registered_as_a_shardable_retraining_estimator():
    estimator = registry.get(lw.NAME)
    assert estimator.cost_class == "retraining" and estimator.shardable


# ---- the meta step ------------------------------------------------------------------------------

class LogisticLoss(nn.Module):
    """Per-row logistic loss of a linear model on the dense features: gradients by hand."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self, x: Features, shift=0.0) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(x.dense @ self.w + shift, x.click, reduction="none")


def dense_rows(dense, click) -> Features:
    n = len(click)
    return Features(torch.zeros(n, 1), torch.zeros(n, 1), torch.tensor(dense, dtype=torch.float64),
                    torch.ones(n, dtype=torch.long), torch.tensor(click, dtype=torch.float64), torch.zeros(n))


def test_a_row_whose_gradient_points_away_from_the_validation_gradient_gets_weight_zero():
    """At w = 0 every p is 1/2, so grad l = (1/2 - y) x. The validation row (x = e1, clicked) has
    gradient (-1/2, 0). Row 0 (same x, clicked) agrees: weight lr * 1/4. Row 1 (same x, not clicked)
    points away: 0. Row 2 (x = e2) is orthogonal: 0. Row 3 (x = 2 e1, clicked) agrees twice as much."""
    loss = LogisticLoss(2)
    params = {k: p.detach() for k, p in loss.named_parameters()}
    batch = dense_rows([[1, 0], [1, 0], [0, 1], [2, 0]], [1, 0, 1, 1])
    validation = dense_rows([[1, 0]], [1])
    raw = lw.meta_weights(loss, params, batch, validation, virtual_lr=0.1)
    np.testing.assert_allclose(raw.numpy(), [0.025, 0.0, 0.0, 0.05], atol=1e-12)


def reference_weights(loss: lw.ClickLoss, batch: Features, validation: Features, lr: float, shift) -> np.ndarray:
    """max(0, lr * grad l_i . grad L_V), one backward per row: the first-order form the virtual step
    must reduce to at eps = 0."""
    params = [p for p in loss.parameters()]
    val_grad = torch.autograd.grad(loss(validation, shift).mean(), params, allow_unused=True)
    out = []
    for i in range(len(batch)):
        row_grad = torch.autograd.grad(loss(batch.subset([i])).sum(), params, allow_unused=True)
        dot = sum(float((g * v).sum()) for g, v in zip(row_grad, val_grad) if g is not None and v is not None)
        out.append(max(0.0, lr * dot))
    return np.array(out)


def test_virtual_step_equals_the_gradient_alignment_on_the_ranker():
    day, _ = synthetic_log()
    model = ranker.new_model(TEXT_DIM, make_params()["ranker"], 5, day.x)
    ranker.fit(model, day.x, None, make_params()["train"], 5, "cpu", epochs=1)
    loss = lw.ClickLoss(model.eval())
    batch, validation = day.x.subset(torch.arange(0, 40)), day.x.subset(torch.arange(200, 400))
    shift = lw.intercept_shift(loss, validation)
    params = {k: p.detach() for k, p in loss.named_parameters()}
    got = lw.meta_weights(loss, params, batch, validation, 0.01, shift).numpy()
    expected = reference_weights(loss, batch, validation, 0.01, shift)
    assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * expected.max())


def test_click_loss_module_is_the_rankers_click_loss():
    day, _ = synthetic_log()
    model = ranker.new_model(TEXT_DIM, make_params()["ranker"], 5, day.x).eval()
    torch.testing.assert_close(lw.ClickLoss(model)(day.x), ranker.loss_terms(model, day.x)[0])


def test_intercept_shift_matches_the_click_rate():
    day, _ = synthetic_log()
    model = ranker.new_model(TEXT_DIM, make_params()["ranker"], 5, None).eval()  # untrained: rate far off
    loss = lw.ClickLoss(model)
    shift = lw.intercept_shift(loss, day.x)
    with torch.no_grad():
        free_logit, bias_logit, _ = model(day.x)
        rate = torch.sigmoid(free_logit + bias_logit + shift).mean()
    assert float(rate) == pytest.approx(float(day.x.click.mean()), abs=1e-5)


def test_normalise_gives_mean_one_per_label_and_keeps_an_all_zero_label_at_zero():
    raw = torch.tensor([0.0, 2.0, 6.0, 0.0, 0.0, 3.0, 1.0])
    click = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    out = lw.normalise(raw, click)
    np.testing.assert_allclose(out.numpy(), [0.0, 0.75, 2.25, 0.0, 0.0, 3.0, 1.0])
    none_clicked = lw.normalise(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(none_clicked.numpy(), [0.0, 0.0, 1.0])


# ---- the validation slice -----------------------------------------------------------------------

def test_top_sessions_keeps_the_best_share_of_sessions_with_and_without_clicks():
    session = np.repeat(np.arange(8), 2)
    has_click = np.repeat([True, True, True, True, False, False, False, False], 2)
    score = np.repeat([0.1, 0.4, 0.3, 0.2, -1.0, -3.0, -2.0, -4.0], 2)
    keep = lw.top_sessions(score, session, has_click, 0.5)
    assert sorted(set(session[keep])) == [1, 2, 4, 6]


def test_click_model_slice_leaves_out_bot_sessions():
    day, is_bot = synthetic_log(seed=1)
    params = make_params()
    mask = lw.validation_rows(context(day, params), params["importance"]["estimators"][lw.NAME])
    assert 0.2 < mask.mean() < 0.4
    assert is_bot[mask].mean() < 0.5 * is_bot.mean()


def test_purchase_and_holdout_slices():
    day, is_bot = synthetic_log(seed=1)
    cfg = make_params(validation="purchase_sessions")["importance"]["estimators"][lw.NAME]
    bought = lw.validation_rows(context(day), cfg)
    buyers = set(day.impressions.loc[day.impressions["purchased"] == 1, "session_id"])
    assert (bought == day.impressions["session_id"].isin(buyers).to_numpy()).all() and not is_bot[bought].any()
    cfg = make_params(validation="holdout")["importance"]["estimators"][lw.NAME]
    assert (lw.validation_rows(context(day), cfg) == day.holdout).all()


# ---- the estimator ------------------------------------------------------------------------------

def test_scores_are_finite_non_negative_deterministic_and_one_per_row():
    day, _ = synthetic_log()
    a = registry.get(lw.NAME).score(context(day))
    b = registry.get(lw.NAME).score(context(day))
    assert list(a.columns) == ["event_id", "score", "evidence_learned_weight"]
    np.testing.assert_array_equal(a["evidence_learned_weight"].to_numpy(), a["score"].to_numpy())
    assert a["event_id"].tolist() == day.impressions["event_id"].tolist()
    assert np.isfinite(a["score"]).all() and (a["score"] >= 0).all() and (a["score"] > 0).mean() > 0.5
    pd.testing.assert_frame_equal(a, b)
    c = registry.get(lw.NAME).score(context(day, seed=4))
    assert not np.array_equal(a["score"], c["score"]), "the seed should matter"


def test_bot_clicks_get_lower_weights_than_other_clicks():
    day, is_bot = synthetic_log(seed=2)
    scores = registry.get(lw.NAME).score(context(day, make_params(epochs=3)))["score"].to_numpy()
    clicked = day.impressions["clicked"].to_numpy() == 1
    assert roc_auc_score(is_bot[clicked], -scores[clicked]) > 0.6


def test_a_shard_gets_exactly_the_scores_of_the_whole_run():
    day, _ = synthetic_log()
    whole = registry.get(lw.NAME).score(context(day))
    rows = np.arange(5, len(day.impressions), 7)
    part = registry.get(lw.NAME).score(context(day, rows=rows))
    pd.testing.assert_frame_equal(part, whole.iloc[rows].reset_index(drop=True))


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("validation", "truth", "validation must be one of"),
    ("validation_fraction", 0, r"validation_fraction must be a number in \(0, 1\]"),
    ("validation_fraction", 1.5, r"validation_fraction must be a number in \(0, 1\]"),
    ("validation_batch_size", None, "validation_batch_size must be a positive integer"),
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("epochs", "2", "epochs must be a positive integer"),
])
def test_bad_knobs_are_named(key, value, message):
    params = make_params(**{key: value})
    with pytest.raises(ValueError, match=f"importance.estimators.{lw.NAME}.{key} ") as error:
        registry.get(lw.NAME).score(context(params=params))
    assert error.match(message)


def test_missing_knobs_are_named():
    params = make_params()
    del params["importance"]["estimators"][lw.NAME]
    with pytest.raises(ValueError, match=f"importance.estimators.{lw.NAME} is missing"):
        registry.get(lw.NAME).score(context(params=params))


def test_a_validation_slice_with_one_label_is_a_clear_error():
    day, _ = synthetic_log()
    day.impressions["purchased"] = 0
    with pytest.raises(ValueError, match=r"validation slice \(purchase_sessions\) has 0 rows"):
        registry.get(lw.NAME).score(context(day, make_params(validation="purchase_sessions")))


def test_a_log_without_training_clicks_is_a_clear_error():
    day, _ = synthetic_log()
    train = torch.as_tensor(day.train_index)
    day.impressions.loc[day.train_index, ["clicked", "purchased"]] = 0
    day.x.click[train] = 0.0
    with pytest.raises(ValueError, match="no clicks|every impression to train on has clicked=0"):
        registry.get(lw.NAME).score(context(day, make_params(validation="holdout")))
