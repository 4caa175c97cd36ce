"""The ranker on synthetic tensors: calibration, safe save/load, position-free ranking score."""
import numpy as np
import pytest
import torch

from pipeline.model import ranker
from pipeline.model.features import DENSE_FEATURES, Features, take

CFG = {"hidden": 8, "max_position": 5, "dropout": 0.0}


def synthetic(n=4000, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Features(query=torch.randn(n, dim, generator=g), title=torch.randn(n, dim, generator=g),
                    dense=torch.randn(n, len(DENSE_FEATURES), generator=g),
                    position=torch.randint(1, 6, (n,), generator=g),
                    click=torch.zeros(n), purchase=torch.zeros(n))


def test_calibration_on_no_rows_keeps_the_identity():
    model = ranker.new_model(6, CFG, seed=1)
    model.click_calibration.copy_(torch.tensor([2.0, -1.0]))  # an earlier fit, to be replaced
    assert ranker.calibrate(model, synthetic(n=10).subset(torch.arange(0)), "cpu") == (1.0, 0.0)
    assert model.click_calibration.tolist() == [1.0, 0.0]


def test_calibration_recovers_a_known_platt_scaling():
    x = synthetic()
    model = ranker.new_model(6, CFG, seed=1)
    with torch.no_grad():
        model.click_head.weight.mul_(20.0)  # a freshly initialised head's logits barely spread (std 0.06)
        free, bias, _ = model(x)
        logit = free + bias
    # Labels drawn as if the true click logit were 3 * z - 1: the model's scale is off by 3.
    g = torch.Generator().manual_seed(2)
    x.click = torch.bernoulli(torch.sigmoid(3 * logit - 1), generator=g)
    a, b = ranker.calibrate(model, x, "cpu")
    assert abs(a - 3) < 0.6 and abs(b + 1) < 0.3
    p = ranker.predict(model, x, "cpu", with_position=True)["p_click"]
    assert abs(p.mean() - x.click.mean().item()) < 0.01


def test_platt_scaling_matches_an_unpenalised_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 1.5, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-(0.7 * logits - 1.2)))).astype(float)
    a, b = ranker.platt_scaling(logits, labels)
    oracle = LogisticRegression(penalty=None, tol=1e-10, max_iter=1000).fit(logits[:, None], labels)
    assert a == pytest.approx(oracle.coef_[0, 0], abs=1e-5) and b == pytest.approx(oracle.intercept_[0], abs=1e-5)
    # Logits moved by float-rounding-sized amounts move the fit by as little.
    nudged = ranker.platt_scaling(logits + rng.normal(0, 1e-5, len(logits)), labels)
    assert abs(nudged[0] - a) < 1e-4 and abs(nudged[1] - b) < 1e-4
    assert ranker.platt_scaling(logits, np.zeros_like(labels)) == (1.0, 0.0)  # one class: the identity


def test_save_and_load_keep_calibration_and_predictions(tmp_path):
    x = synthetic(200)
    model = ranker.new_model(6, CFG, seed=1)
    model.click_calibration.copy_(torch.tensor([2.0, -0.5]))
    ranker.save(model, tmp_path)
    loaded = ranker.load(tmp_path)
    assert torch.equal(loaded.click_calibration, torch.tensor([2.0, -0.5]))
    a, b = ranker.predict(model, x, "cpu", True), ranker.predict(loaded, x, "cpu", True)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_ranking_score_ignores_position():
    x = synthetic(300)
    model = ranker.new_model(6, CFG, seed=1)
    with torch.no_grad():
        model.position_bias.weight.copy_(torch.linspace(3, -3, 6).unsqueeze(1))
    moved = Features(x.query, x.title, x.dense, torch.full_like(x.position, 5), x.click, x.purchase)
    original, shifted = ranker.predict(model, x, "cpu", True), ranker.predict(model, moved, "cpu", True)
    assert np.allclose(original["score"], shifted["score"])
    assert not np.allclose(original["p_click"], shifted["p_click"])


def test_weights_of_another_shape_fail_with_a_clear_message(tmp_path):
    model = ranker.new_model(6, CFG, seed=1)
    ranker.save(model, tmp_path)
    bigger = ranker.new_model(6, {**CFG, "hidden": 16}, seed=1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in bigger.state_dict().items()}, str(tmp_path / ranker.WEIGHTS_FILE))
    try:
        ranker.load(tmp_path)
    except ValueError as exc:
        message = str(exc)
    else:
        raise AssertionError("weights of another shape loaded")
    assert "ranker.safetensors does not match ranker.json" in message
    width = 3 * 6 + len(DENSE_FEATURES)
    assert f"body.0.weight: shape (16, {width}), the config implies (8, {width})" in message


def test_dataloader_workers_train_exactly_as_in_process():
    """Workers only gather the batches: same batches, same dropout masks, same weights."""
    from pipeline.model import training

    g = torch.Generator().manual_seed(3)
    n = 1500
    texts = torch.randn(40, 6, generator=g)
    x = Features(query=torch.randint(0, 40, (n,), generator=g, dtype=torch.int32),
                 title=torch.randint(0, 40, (n,), generator=g, dtype=torch.int32),
                 dense=torch.randn(n, len(DENSE_FEATURES), generator=g), position=torch.randint(1, 6, (n,), generator=g),
                 click=torch.bernoulli(torch.full((n,), 0.2), generator=g), purchase=torch.zeros(n), texts=texts)
    cfg = {"batch_size": 64, "learning_rate": 0.01, "weight_decay": 0.0}
    weights = np.random.default_rng(0).random(n)
    states = []
    for workers in (0, 2):
        model = ranker.new_model(6, {**CFG, "dropout": 0.2}, seed=1, data=x)
        training.fit(model, x, weights, {**cfg, "loader_workers": workers}, 5, "cpu", 2, loss_fn=ranker.per_sample_loss)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_id_hashes_are_fixed_per_value_and_zero_when_missing():
    import pandas as pd

    from pipeline.model.features import hash_values

    first = hash_values(pd.Series(["i001", "i002", None, "i001"]))
    again = hash_values(pd.Series(["i999", "i001", "i002"]))  # other values beside them, another order
    assert first[0] == first[3] == again[1] and first[1] == again[2] and first[0] != first[1]
    assert first[2] == 0 and (first[[0, 1, 3]] > 0).all() and (again > 0).all()


def test_item_embeddings_learn_what_the_texts_cannot_say():
    """Clicks that depend on the item alone (its texts are noise): a ranker with id embeddings orders
    held-out impressions of the same items by their click rate; without them it cannot."""
    from sklearn.metrics import roc_auc_score

    n, items = 12000, 40
    g = torch.Generator().manual_seed(3)
    x = synthetic(n)
    item = torch.randint(0, items, (n,), generator=g)
    x.ids = torch.stack([item * 7919 + 1, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)], 1).int()
    appeal = torch.linspace(-2.5, 0.5, items)[torch.randperm(items, generator=g)]
    x.click = torch.bernoulli(torch.sigmoid(appeal[item]), generator=g)
    train, held = torch.arange(0, 9000), torch.arange(9000, n)
    cfg = {"batch_size": 256, "learning_rate": 0.01, "weight_decay": 0.0}
    aucs = {}
    for buckets in (0, 4096):
        model = ranker.new_model(6, {**CFG, "ids": {"buckets": buckets, "dim": 4}}, seed=1, data=x.subset(train))
        ranker.fit(model, x.subset(train), None, cfg, seed=1, device="cpu", epochs=3)
        score = ranker.predict(model, x.subset(held), "cpu", with_position=False)["p_click"]
        aucs[buckets] = roc_auc_score(x.click[held].numpy(), score)
    assert aucs[4096] > 0.7 and aucs[0] < 0.6, aucs


def test_an_item_first_seen_at_serving_is_scored():
    """An unseen hash folds into one of the trained buckets and is scored from that bucket's row."""
    n, buckets = 50, 64
    one = synthetic(1)  # every row has the same texts, dense features and position: only the ids differ
    x = Features(one.query.expand(n, -1), one.title.expand(n, -1), one.dense.expand(n, -1),
                 one.position.expand(n), torch.zeros(n), torch.zeros(n))
    x.ids = torch.randint(1, 2**30, (n, 3), dtype=torch.int32)  # hashes no training row had
    model = ranker.new_model(6, {**CFG, "ids": {"buckets": buckets, "dim": 4}}, seed=1)
    with torch.no_grad():
        for table in model.id_embeddings:
            table.weight.normal_(std=1.0)  # as if trained: buckets far apart
    scores = ranker.predict(model, x, "cpu", with_position=False)["score"]
    assert np.isfinite(scores).all() and len(np.unique(scores)) > n // 2
    # A hash that folds into the same buckets as row 0's gets row 0's score.
    twin = x.subset(torch.tensor([0, 1]))
    twin.ids = twin.ids.clone()
    twin.ids[1] = (twin.ids[0].long() + (buckets - 1)).to(torch.int32)
    twin_scores = ranker.predict(model, twin, "cpu", with_position=False)["score"]
    assert np.allclose(twin_scores, scores[0], rtol=1e-6, atol=0)


def test_a_model_saved_without_id_embeddings_still_loads(tmp_path):
    import json

    model = ranker.new_model(6, CFG, seed=1)
    ranker.save(model, tmp_path)
    config = json.loads((tmp_path / ranker.CONFIG_FILE).read_text())
    for key in ("id_buckets", "id_dim"):  # a config written before id embeddings existed
        config.pop(key)
    (tmp_path / ranker.CONFIG_FILE).write_text(json.dumps(config))
    x = synthetic(20)
    assert np.array_equal(ranker.predict(ranker.load(tmp_path), x, "cpu", True)["score"],
                          ranker.predict(model, x, "cpu", True)["score"])


def test_weighted_start_is_the_start_on_the_rows_that_count():
    """The position biases and the click intercept start from the weighted log: rows at weight 0 (say,
    bot sessions clicking everywhere) must not flatten the starting position curve of a weighted retrain."""
    g = torch.Generator().manual_seed(4)
    x = synthetic(3000)
    x.click = torch.bernoulli(1.0 / (1.0 + x.position.float()), generator=g)
    bots = torch.rand(len(x), generator=g) < 0.3
    x.click[bots] = 1.0  # noise at every position
    kept = ranker.new_model(6, CFG, seed=1, data=x.subset(torch.nonzero(~bots).squeeze(1)))
    weighted = ranker.new_model(6, CFG, seed=1, data=x, weights=(~bots).numpy().astype(float))
    unweighted = ranker.new_model(6, CFG, seed=1, data=x)
    for name in ("position_bias.weight", "click_head.bias"):
        assert torch.allclose(weighted.state_dict()[name], kept.state_dict()[name], atol=1e-5), name
        assert not torch.allclose(unweighted.state_dict()[name], kept.state_dict()[name], atol=1e-2), name


def test_take_cuts_the_slices_of_concatenated_parts_and_lets_the_parts_go():
    texts = torch.randn(7, 6)

    def part(n, seed):
        g = torch.Generator().manual_seed(seed)
        return Features(query=torch.randint(0, 7, (n,), generator=g), title=torch.randint(0, 7, (n,), generator=g),
                        dense=torch.randn(n, len(DENSE_FEATURES), generator=g),
                        position=torch.randint(1, 6, (n,), generator=g), click=torch.rand(n, generator=g).round(),
                        purchase=torch.zeros(n), texts=texts, ids=torch.randint(0, 99, (n, 3), generator=g,
                                                                                   dtype=torch.int32),
                        numeric=torch.randn(n, 2, generator=g), numeric_names=("f_a", "f_b"))

    parts = [part(50, 1), part(0, 2), part(30, 3), part(45, 4)]
    names = ("dense", "position", "click", "ids", "numeric", "categorical", "query", "title")
    whole = {name: torch.cat([getattr(p, name) for p in parts]) for name in names}
    rng = np.random.default_rng(0)
    indices = [np.sort(rng.choice(125, 90, replace=False)), np.array([124, 0, 60, 3]), np.array([], dtype=int)]
    got = take(parts, indices)
    assert parts == []
    for index, have in zip(indices, got):
        assert len(have) == len(index) and have.numeric_names == ("f_a", "f_b") and have.texts is texts
        for name in names:
            assert torch.equal(whole[name][torch.from_numpy(index)], getattr(have, name)), name
    with pytest.raises(ValueError, match="outside the parts' 50 rows"):
        take([part(50, 1)], [np.array([50])])
