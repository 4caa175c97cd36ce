"""The gradient and early-training estimators (el2n, grand, grand_last_layer, tracin, tracin_last_layer)
on a small synthetic log: the per-sample gradients against plain autograd, batching, determinism,
out-of-fold scoring, checkpoints, and clear errors on bad input."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import ranker
from pipeline.dataset import DayData
from pipeline.features import DENSE_FEATURES, Features
from pipeline.importance import el2n, grand, registry
from pipeline.importance.registry import Context

NAMES = ("el2n", "grand", "grand_last_layer", "tracin", "tracin_last_layer")
TEXT_DIM = 8


def synthetic_day(n_requests: int = 40, list_length: int = 10, seed: int = 0) -> DayData:
    """Requests of ranked items whose clicks follow the query-title match and the position."""
    g = torch.Generator().manual_seed(seed)
    n = n_requests * list_length
    query = torch.randn(n_requests, TEXT_DIM, generator=g).repeat_interleave(list_length, 0)
    title = torch.randn(n, TEXT_DIM, generator=g)
    dense = torch.randn(n, len(DENSE_FEATURES), generator=g)
    position = torch.arange(1, list_length + 1).repeat(n_requests)
    logit = 1.5 * (query * title).sum(1) / TEXT_DIM ** 0.5 - 0.3 * position.float()
    click = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    purchase = click * (torch.rand(n, generator=g) < 0.3).float()
    impressions = pd.DataFrame({
        "event_id": [f"e{i:05d}" for i in range(n)],
        "request_id": [f"r{i // list_length:04d}" for i in range(n)],
        "clicked": click.long().numpy(),
        "purchased": purchase.long().numpy(),
        "position": position.numpy(),
    })
    holdout = np.zeros(n, dtype=bool)
    holdout[-(n // 5):] = True
    x = Features(query, title, dense, position, click, purchase)
    return DayData(impressions, pd.DataFrame(), x, holdout)


def make_params() -> dict:
    return {
        "ranker": {"hidden": 16, "max_position": 20, "dropout": 0.1},
        "train": {"batch_size": 64, "learning_rate": 0.01, "weight_decay": 1e-4},
        "importance": {"estimators": {
            "el2n": {"folds": 3, "epochs": [1, 2], "targets": ["click"], "batch_size": 64},
            "grand": {"epochs": [1, 2], "seeds": 2, "loss": "click", "batch_size": 64},
            "grand_last_layer": {"epochs": [1, 2], "seeds": 2, "batch_size": 64},
            "tracin": {"epochs": [1, 2, 3], "loss": "click", "batch_size": 64},
            "tracin_last_layer": {"epochs": [1, 2, 3], "batch_size": 64},
        }},
    }


def context(day=None, params=None, seed=3) -> Context:
    return Context(day or synthetic_day(), params or make_params(), seed, "cpu")


def trained_model(day: DayData, epochs: int = 2) -> ranker.Ranker:
    model = ranker.new_model(TEXT_DIM, make_params()["ranker"], 5, day.x)
    ranker.fit(model, day.x, None, make_params()["train"], 5, "cpu", epochs=epochs)
    return model.eval()


def loop_sq_norms(model: ranker.Ranker, x: Features, kind: str, only=None) -> np.ndarray:
    """One loss.backward() per row: the reference the vmapped gradients must match."""
    params = [p for name, p in model.named_parameters() if only is None or name.startswith(only)]
    out = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        click_loss, purchase_loss = ranker.loss_terms(model, x.subset([i]))
        (click_loss if kind == "click" else click_loss + purchase_loss).sum().backward()
        out.append(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))
    return np.array(out)


def test_all_five_are_registered_with_their_cost_class():
    estimators = registry.available()
    assert estimators["el2n"].cost_class == "retraining"
    for name in NAMES[1:]:
        assert estimators[name].cost_class == "per-sample-gradients"


@pytest.mark.parametrize("kind", ["click", "click_purchase"])
def test_vmapped_gradient_norms_equal_a_per_row_backward_loop(kind):
    day = synthetic_day()
    model = trained_model(day)
    x = day.x.subset(torch.arange(0, 40))
    expected = loop_sq_norms(model, x, kind)
    got = grand.gradient_sq_norms(model, x, kind, "cpu", batch_size=16)
    assert expected.min() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)


def test_closed_form_last_layer_norm_equals_autograd():
    day = synthetic_day()
    model = trained_model(day)
    x = day.x.subset(torch.arange(0, 30))
    expected = np.sqrt(loop_sq_norms(model, x, "click", only="click_head."))
    got = grand.last_layer_norms(model, x, "cpu", batch_size=16)
    assert x.click.sum() > 0 and (x.click == 0).sum() > 0  # both signs of p - y are checked
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


def test_last_layer_norm_is_bounded_by_the_full_gradient_norm():
    day = synthetic_day()
    model = trained_model(day)
    full = np.sqrt(grand.gradient_sq_norms(model, day.x, "click", "cpu", 64))
    head = grand.last_layer_norms(model, day.x, "cpu", 64)
    assert (head <= full * (1 + 1e-5)).all() and (head < full).mean() > 0.9


def test_batch_size_does_not_change_the_norms():
    day = synthetic_day()
    model = trained_model(day)
    x = day.x.subset(torch.arange(0, 150))
    np.testing.assert_allclose(grand.gradient_sq_norms(model, x, "click", "cpu", 7),
                               grand.gradient_sq_norms(model, x, "click", "cpu", 64), rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(grand.last_layer_norms(model, x, "cpu", 7),
                               grand.last_layer_norms(model, x, "cpu", 64), rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_does_not_change_the_scores(name):
    small, large = make_params(), make_params()
    small["importance"]["estimators"][name]["batch_size"] = 7
    day = synthetic_day(n_requests=20)
    a = registry.get(name).score(context(day, small))
    b = registry.get(name).score(context(day, large))
    assert (a["event_id"] == b["event_id"]).all()
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_deterministic_finite_and_one_per_row(name):
    day = synthetic_day()
    a = registry.get(name).score(context(day))
    b = registry.get(name).score(context(day))
    assert list(a.columns) == ["event_id", "score"]
    assert a["event_id"].tolist() == day.impressions["event_id"].tolist()
    assert np.isfinite(a["score"]).all() and (a["score"] <= 0).all()
    pd.testing.assert_frame_equal(a, b)
    c = registry.get(name).score(context(day, seed=4))
    assert not np.array_equal(a["score"], c["score"]), "the seed should matter"


def test_checkpoints_are_the_states_of_one_training_run():
    day = synthetic_day()
    ctx = context(day)
    x = day.x.subset(day.train_index)
    models = grand.fit_checkpoints(ctx, x, 11, [2, 1])
    assert len(models) == 2
    for epochs, model in zip([1, 2], models):
        plain = ranker.new_model(TEXT_DIM, ctx.params["ranker"], 11, x)
        ranker.fit(plain, x, None, ctx.params["train"], 11, "cpu", epochs=epochs)
        for (k, v), w in zip(model.state_dict().items(), plain.state_dict().values()):
            assert torch.equal(v, w), f"checkpoint after epoch {epochs} differs in {k}"


def test_tracin_last_layer_sums_learning_rate_times_squared_head_norms():
    day = synthetic_day()
    ctx = context(day)
    cfg = ctx.params["importance"]["estimators"]["tracin_last_layer"]
    models = grand.fit_checkpoints(ctx, day.x.subset(day.train_index), ctx.seed, cfg["epochs"])
    expected = sum(ctx.params["train"]["learning_rate"] * grand.last_layer_norms(m, day.x, "cpu", 64) ** 2
                   for m in models)
    got = registry.get("tracin_last_layer").score(ctx)["score"].to_numpy()
    np.testing.assert_allclose(got, -expected, rtol=1e-6)


def test_el2n_scores_every_row_with_models_that_never_saw_it():
    """With the click target only, EL2N of a row is the mean of |p_c - y|. If no scoring model saw the
    row, flipping its label leaves every p_c unchanged, so the two norms add up to exactly 1."""
    day = synthetic_day()
    rows = [int(day.train_index[3]), int(day.train_index[150]), int(day.holdout_index[5])]
    before = el2n.score(context(day))["score"].to_numpy()
    for row in rows:
        flipped = copy.deepcopy(day)
        flipped.x.click[row] = 1 - flipped.x.click[row]
        flipped.x.purchase[row] = 0
        after = el2n.score(context(flipped))["score"].to_numpy()
        assert before[row] + after[row] == pytest.approx(-1.0, abs=1e-6)


def test_el2n_purchase_target_adds_the_purchase_error():
    day = synthetic_day()
    click_only = el2n.score(context(day))["score"].to_numpy()
    params = make_params()
    params["importance"]["estimators"]["el2n"]["targets"] = ["click", "purchase"]
    both = el2n.score(context(day, params))["score"].to_numpy()
    assert (both <= click_only + 1e-12).all() and (both < click_only).any()


def no_training_clicks(day: DayData) -> DayData:
    day = copy.deepcopy(day)
    day.x.click[day.train_index] = 0
    day.x.purchase[day.train_index] = 0
    return day


@pytest.mark.parametrize("name", NAMES)
def test_a_training_slice_without_clicks_is_a_clear_error(name):
    with pytest.raises(ValueError, match="every impression has clicked=0"):
        registry.get(name).score(context(no_training_clicks(synthetic_day())))


def test_el2n_fewer_requests_than_folds_is_a_clear_error():
    params = make_params()
    params["importance"]["estimators"]["el2n"]["folds"] = 50
    with pytest.raises(ValueError, match="fewer than importance.estimators.el2n.folds=50"):
        el2n.score(context(params=params))


@pytest.mark.parametrize("name, key, value, message", [
    ("grand", "epochs", [], "epochs must be a non-empty list"),
    ("tracin", "epochs", 3, "epochs must be a non-empty list"),
    ("grand", "loss", "hinge", "loss must be one of"),
    ("tracin_last_layer", "batch_size", 0, "batch_size must be a positive integer"),
    ("grand_last_layer", "seeds", None, "seeds must be a positive integer"),
    ("el2n", "targets", ["ctr"], "targets must be a non-empty list"),
    ("el2n", "folds", 1, "folds must be at least 2"),
])
def test_bad_knobs_are_named(name, key, value, message):
    params = make_params()
    params["importance"]["estimators"][name][key] = value
    with pytest.raises(ValueError, match=f"importance.estimators.{name}.{key}"):
        registry.get(name).score(context(params=params))
    with pytest.raises(ValueError, match=message):
        registry.get(name).score(context(params=params))


def test_missing_knobs_are_named():
    params = make_params()
    del params["importance"]["estimators"]["grand"]
    with pytest.raises(ValueError, match="importance.estimators.grand is missing"):
        registry.get("grand").score(context(params=params))
