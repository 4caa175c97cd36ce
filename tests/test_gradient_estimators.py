"""The gradient and early-training estimators (el2n, grand, grand_last_layer, tracin, tracin_last_layer)
on a small synthetic log: the per-sample gradient norms against plain autograd (a per-row backward loop
and torch.func's vmap over grad), batching, determinism, sharding, out-of-fold scoring, checkpoints,
TracIn's in-training form, and clear errors on bad input."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from pipeline.model import ranker
from pipeline.model.dataset import DayData
from pipeline.model.features import DENSE_FEATURES, Features
from pipeline.importance.estimators import el2n, grand, tracin
from pipeline.importance import registry
from pipeline.importance.registry import Context

NAMES = ("el2n", "grand", "grand_last_layer", "tracin", "tracin_last_layer")
TEXT_DIM = 8
OWN_TRAINING = {"train_batch_size": 32, "learning_rate": 0.02}  # the estimators' own run: not train:'s


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
            "grand": {"epochs": [1, 2], "seeds": 2, "loss": "click", "batch_size": 64, **OWN_TRAINING},
            "grand_last_layer": {"epochs": [1, 2], "seeds": 2, "batch_size": 64, **OWN_TRAINING},
            "tracin": {"epochs": 2, "loss": "click", "batch_size": 64, **OWN_TRAINING},
            "tracin_last_layer": {"epochs": 2, "batch_size": 64, **OWN_TRAINING},
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


class _RowLoss(nn.Module):
    """The ranker's per-impression loss as a module, so functional_call can swap its parameters."""

    def __init__(self, model: ranker.Ranker, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: Features) -> torch.Tensor:
        return grand.chosen_loss(*ranker.loss_terms(self.model, x), self.kind)


def vmapped_sq_norms(model: ranker.Ranker, x: Features, kind: str) -> np.ndarray:
    """Per-row gradients materialised by torch.func (vmap over grad), then reduced to squared norms."""
    module = _RowLoss(model.eval(), kind)
    params = {k: p.detach() for k, p in module.named_parameters()}

    def one_row(theta, query, title, dense, position, click, purchase):
        x1 = Features(query[None], title[None], dense[None], position[None], click[None], purchase[None])
        return functional_call(module, theta, (x1,))[0]

    grads = vmap(grad(one_row), in_dims=(None, 0, 0, 0, 0, 0, 0))(
        params, x.query, x.title, x.dense, x.position, x.click, x.purchase)
    return sum(g.reshape(len(x), -1).pow(2).sum(1) for g in grads.values()).double().numpy()


def test_all_five_are_registered_with_their_cost_class():
    estimators = registry.available()
    assert estimators["el2n"].cost_class == "retraining"
    for name in NAMES[1:]:
        assert estimators[name].cost_class == "per-sample-gradients"
        assert estimators[name].shardable


@pytest.mark.parametrize("kind", ["click", "click_purchase"])
def test_gradient_norm_trick_equals_a_per_row_backward_loop(kind):
    day = synthetic_day()
    model = trained_model(day)
    x = day.x.subset(torch.arange(0, 40))
    expected = loop_sq_norms(model, x, kind)
    got = grand.gradient_sq_norms(model, x, kind, "cpu", batch_size=16)
    assert expected.min() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("kind", ["click", "click_purchase"])
def test_gradient_norm_trick_equals_vmapped_per_row_gradients(kind):
    day = synthetic_day()
    model = trained_model(day)
    expected = vmapped_sq_norms(model, day.x, kind)
    got = grand.gradient_sq_norms(model, day.x, kind, "cpu", batch_size=64)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)


def test_gradient_norm_trick_scores_only_the_rows_asked_for():
    day = synthetic_day()
    model = trained_model(day)
    rows = np.array([301, 4, 77, 5, 390])
    np.testing.assert_allclose(grand.gradient_sq_norms(model, day.x, "click", "cpu", 2, rows),
                               loop_sq_norms(model, day.x.subset(rows), "click"), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(grand.last_layer_norms(model, day.x, "cpu", 2, rows),
                               grand.last_layer_norms(model, day.x.subset(rows), "cpu", 64), rtol=1e-6)


def test_gradient_norm_trick_refuses_layers_it_has_no_rule_for():
    model = trained_model(synthetic_day())
    model.extra = nn.LayerNorm(4)
    with pytest.raises(TypeError, match="no norm rule for a LayerNorm layer"):
        grand.gradient_sq_norms(model, synthetic_day().x, "click", "cpu", 16)


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
    assert list(a.columns[:2]) == ["event_id", "score"]
    evidence = a.filter(like="evidence_")
    assert evidence.shape[1] == 1  # the norm or influence the score negates
    np.testing.assert_allclose(evidence.iloc[:, 0].to_numpy(), -a["score"].to_numpy())
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


@pytest.mark.parametrize("name, only", [("grand", None), ("grand_last_layer", "click_head.")])
def test_grand_averages_norms_over_the_checkpoints_and_seeds_of_its_own_runs(name, only):
    """The estimator's own optimiser settings, not train:'s, each checkpoint a plain ranker.fit run."""
    day = synthetic_day()
    ctx = context(day)
    cfg = ctx.params["importance"]["estimators"][name]
    x = day.x.subset(day.train_index)
    own = {**ctx.params["train"], "batch_size": cfg["train_batch_size"], "learning_rate": cfg["learning_rate"]}
    norms = []
    for seed in (ctx.seed, ctx.seed + 1):
        for epochs in cfg["epochs"]:
            model = ranker.new_model(TEXT_DIM, ctx.params["ranker"], seed, x)
            ranker.fit(model, x, None, own, seed, "cpu", epochs=epochs)
            norms.append(np.sqrt(loop_sq_norms(model.eval(), day.x, "click", only)))
    got = registry.get(name).score(ctx)["score"].to_numpy()
    np.testing.assert_allclose(-got, np.mean(norms, axis=0), rtol=1e-4)


def test_tracin_records_the_same_training_run_as_ranker_fit():
    day = synthetic_day()
    ctx = context(day)
    x = day.x.subset(day.train_index)
    train = grand.own_training(ctx, ctx.params["importance"]["estimators"]["tracin"], "tracin")
    _, checkpoints = tracin.recorded_run(ctx, x, train, 2, "click", last_layer=False)
    for epochs, recorded in zip([1, 2], checkpoints):
        plain = ranker.new_model(TEXT_DIM, ctx.params["ranker"], ctx.seed, x)
        ranker.fit(plain, x, None, train, ctx.seed, "cpu", epochs=epochs)
        for (k, v), w in zip(recorded.state_dict().items(), plain.state_dict().values()):
            assert torch.equal(v, w), f"recorded state after epoch {epochs} differs in {k}"


@pytest.mark.parametrize("name, only", [("tracin", None), ("tracin_last_layer", "click_head.")])
def test_tracin_sums_learning_rate_times_squared_norms_at_each_visit(name, only):
    """Without dropout and with one optimiser step per epoch, a training row is visited at the states
    theta_0 and theta_1 (after one step); a holdout row is never visited and gets the checkpoints theta_1
    and theta_2 instead. Each term is lr x the squared gradient norm from a per-row backward loop."""
    day = synthetic_day()
    params = make_params()
    params["ranker"]["dropout"] = 0.0
    cfg = params["importance"]["estimators"][name]
    cfg.update(epochs=2, train_batch_size=len(day.train_index))
    ctx = context(day, params)
    x = day.x.subset(day.train_index)
    train = grand.own_training(ctx, cfg, name)
    states = []
    for steps in range(3):
        model = ranker.new_model(TEXT_DIM, params["ranker"], ctx.seed, x)
        ranker.fit(model, x, None, train, ctx.seed, "cpu", epochs=steps)
        states.append(model.eval())
    lr = cfg["learning_rate"]
    visited = lr * sum(loop_sq_norms(m, x, "click", only) for m in states[:2])
    held = day.x.subset(day.holdout_index)
    unvisited = lr * sum(loop_sq_norms(m, held, "click", only) for m in states[1:])
    got = registry.get(name).score(ctx)["score"].to_numpy()
    np.testing.assert_allclose(-got[day.train_index], visited, rtol=1e-4)
    np.testing.assert_allclose(-got[day.holdout_index], unvisited, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES[1:])
def test_scoring_a_subset_of_rows_gives_those_rows_the_scores_of_the_whole_log(name):
    day = synthetic_day()
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(day.impressions))[:117]  # unsorted, from both the training and holdout slices
    assert day.holdout[rows].any() and (~day.holdout[rows]).any()
    whole = registry.get(name).score(context(day))
    part = registry.get(name).score(Context(day, make_params(), 3, "cpu", rows=rows))
    assert part["event_id"].tolist() == day.impressions["event_id"].iloc[rows].tolist()
    np.testing.assert_array_equal(part["score"].to_numpy(), whole["score"].to_numpy()[rows])


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
    ("grand_last_layer", "epochs", 2, "epochs must be a non-empty list"),
    ("tracin", "epochs", [1, 2], "epochs must be a positive integer"),
    ("grand", "loss", "hinge", "loss must be one of"),
    ("tracin_last_layer", "batch_size", 0, "batch_size must be a positive integer"),
    ("grand_last_layer", "seeds", None, "seeds must be a positive integer"),
    ("grand", "train_batch_size", 1.5, "train_batch_size must be a positive integer"),
    ("tracin", "learning_rate", 0, "learning_rate must be a positive number"),
    ("tracin_last_layer", "learning_rate", "fast", "learning_rate must be a positive number"),
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
