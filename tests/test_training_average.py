"""train.average_epochs: the weights kept are an exponential moving average of every step's weights,
checked against the average computed by hand from the weights after each step."""
import pytest
import torch

from pipeline.model import training
from pipeline.model.features import Features

ROWS, BATCH = 96, 16  # 6 optimizer steps an epoch


def toy_rows() -> Features:
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(ROWS, 3, generator=g)
    click = (dense[:, 0] + 0.3 * torch.randn(ROWS, generator=g) > 0).float()
    empty = torch.zeros(ROWS, 1)
    return Features(empty, empty, dense, torch.ones(ROWS, dtype=torch.long), click, torch.zeros(ROWS))


def click_loss(model, batch):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(batch.dense).squeeze(1), batch.click,
                                                                reduction="none")


def trained(steps: int, average_epochs: float, validation=None, epochs: int = 10):
    """The weights after `steps` optimizer steps (or `epochs`), and fit's result."""
    model = torch.nn.Linear(3, 1)
    torch.manual_seed(1)
    model.reset_parameters()
    cfg = {"batch_size": BATCH, "learning_rate": 0.1, "weight_decay": 0.0, "max_steps": steps}
    result = training.fit(model, toy_rows(), None, cfg, seed=5, device="cpu", epochs=epochs, loss_fn=click_loss,
                          validation=validation, average_epochs=average_epochs)
    return {k: v.clone() for k, v in model.state_dict().items()}, result


def test_the_kept_weights_are_the_moving_average_of_every_steps_weights():
    steps, average_epochs = 15, 0.5
    # The same seed walks the same batches: a run of k steps ends with the weights after step k.
    after = [trained(k, 0.0)[0] for k in range(1, steps + 1)]
    start = torch.nn.Linear(3, 1)
    torch.manual_seed(1)
    start.reset_parameters()
    decay = 1 - 1 / (average_epochs * ROWS / BATCH)
    expected = {k: v.clone() for k, v in start.state_dict().items()}
    for step, weights in enumerate(after, start=1):
        d = min(decay, (1 + step) / (10 + step))
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    got = trained(steps, average_epochs)[0]
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-6), key
        assert not torch.allclose(got[key], after[-1][key], atol=1e-3), key  # not the last step's weights


def test_validation_judges_and_keeps_the_average():
    # A noisy validation slice of other rows, so that the best epoch is not simply the last.
    g = torch.Generator().manual_seed(9)
    rows = toy_rows()
    validation = (Features(rows.query, rows.title, torch.randn(ROWS, 3, generator=g), rows.position,
                           (torch.rand(ROWS, generator=g) < 0.5).float(), rows.purchase), None)
    kept, result = trained(None, 1.0, validation, epochs=4)
    assert len(result.validation_history) == 4
    # The kept weights are the average as it stood at the best epoch's end: a run of that many steps
    # without a validation slice ends with it.
    alone, _ = trained(result.best_epoch * ROWS // BATCH, 1.0)
    for key in kept:
        assert torch.allclose(kept[key], alone[key], atol=1e-6), key
    # And the loss validation judged is that average's.
    checked = torch.nn.Linear(3, 1)
    checked.load_state_dict(alone)
    loss = training.weighted_loss(checked, validation[0], None, "cpu", click_loss)
    assert loss == pytest.approx(min(result.validation_history), abs=1e-6)


@pytest.mark.parametrize("value", [-1, True, "1"])
def test_a_nonsense_average_is_refused_by_name(value):
    with pytest.raises(ValueError, match="train.average_epochs"):
        training.average_epochs({"average_epochs": value})
