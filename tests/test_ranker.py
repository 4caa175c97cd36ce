"""The ranker on synthetic tensors: calibration, safe save/load, position-free ranking score."""
import numpy as np
import torch

from pipeline import ranker
from pipeline.features import DENSE_FEATURES, Features

CFG = {"hidden": 8, "max_position": 5, "dropout": 0.0}


def synthetic(n=4000, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Features(query=torch.randn(n, dim, generator=g), title=torch.randn(n, dim, generator=g),
                    dense=torch.randn(n, len(DENSE_FEATURES), generator=g),
                    position=torch.randint(1, 6, (n,), generator=g),
                    click=torch.zeros(n), purchase=torch.zeros(n))


def test_calibration_recovers_a_known_platt_scaling():
    x = synthetic()
    model = ranker.new_model(6, CFG, seed=1)
    with torch.no_grad():
        free, bias, _ = model(x)
        logit = free + bias
    # Labels drawn as if the true click logit were 3 * z - 1: the model's scale is off by 3.
    g = torch.Generator().manual_seed(2)
    x.click = torch.bernoulli(torch.sigmoid(3 * logit - 1), generator=g)
    a, b = ranker.calibrate(model, x, "cpu")
    assert abs(a - 3) < 0.6 and abs(b + 1) < 0.3
    p = ranker.predict(model, x, "cpu", with_position=True)["p_click"]
    assert abs(p.mean() - x.click.mean().item()) < 0.01


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
    assert "body.0.weight: shape (16, 22), the config implies (8, 22)" in message


def test_dataloader_workers_train_exactly_as_in_process():
    """Workers only gather the batches: same batches, same dropout masks, same weights."""
    from pipeline import training

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
