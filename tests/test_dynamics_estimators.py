"""aum, forgetting, confident_learning and data_oob: the array-level pieces on hand-made inputs, and
the estimators on a tiny separable problem with planted label flips."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.model.dataset import DayData
from pipeline.model.features import DENSE_FEATURES, Features
from pipeline.importance.estimators import confident_learning as cl
from pipeline.importance.estimators import data_oob, training_dynamics
from pipeline.importance.registry import Context, get

ROWS, DIM, MAX_POSITION, FLIP_RATE = 600, 4, 5, 0.08
NAMES = ("aum", "forgetting", "confident_learning", "data_oob")


def synthetic_params() -> dict:
    return {
        "ranker": {"hidden": 16, "max_position": MAX_POSITION, "dropout": 0.0},
        "train": {"batch_size": 64, "learning_rate": 0.01, "weight_decay": 0.0},
        "importance": {"estimators": {
            "aum": {"epochs": 10, "checkpoints_per_epoch": 2, "batch_size": 128},
            "forgetting": {"epochs": 10, "checkpoints_per_epoch": 2, "batch_size": 128, "tie_break": 0.5},
            "confident_learning": {"folds": 3, "epochs": 10, "batch_size": 128},
            "data_oob": {"bags": 16, "epochs": 20, "batch_size": 64, "learning_rate": 0.05, "weight_decay": 0.0},
        }},
    }


def synthetic_context(seed: int = 0, clicks: np.ndarray | None = None) -> tuple[Context, np.ndarray]:
    """A click that is a clean function of one dense feature, then a few labels flipped; the last
    fifth of the requests is the holdout slice. Returns the context and the flipped mask."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=ROWS).astype(np.float32)
    dense = np.column_stack([signal, rng.normal(size=(ROWS, len(DENSE_FEATURES) - 1))]).astype(np.float32)
    true_click = (signal > 0.5).astype(np.float32)
    flipped = rng.random(ROWS) < FLIP_RATE
    click = np.where(flipped, 1 - true_click, true_click).astype(np.float32) if clicks is None else clicks
    x = Features(
        query=torch.from_numpy(rng.normal(size=(ROWS, DIM)).astype(np.float32)),
        title=torch.from_numpy(rng.normal(size=(ROWS, DIM)).astype(np.float32)),
        dense=torch.from_numpy(dense),
        position=torch.from_numpy(np.tile(np.arange(1, MAX_POSITION + 1), ROWS // MAX_POSITION)),
        click=torch.from_numpy(click),
        purchase=torch.zeros(ROWS),
    )
    impressions = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(ROWS)],
        "request_id": [f"r{i // MAX_POSITION:04d}" for i in range(ROWS)],
        "position": x.position.numpy(),
        "clicked": click.astype(int),
    })
    holdout = np.arange(ROWS) >= int(ROWS * 0.8)
    data = DayData(impressions, pd.DataFrame({"item_id": [], "title": []}), x, holdout)
    return Context(data, synthetic_params(), seed=seed, device="cpu"), flipped


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_context()


@pytest.fixture(scope="module")
def scores(synthetic):
    ctx, _ = synthetic
    return {name: get(name).score(ctx) for name in NAMES}


# confident learning on arrays

def test_find_label_issues_flags_planted_flips_and_nothing_on_a_perfect_matrix():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], 20)
    confident = rng.uniform(0.7, 0.95, size=len(labels))
    planted = np.array([2, 25, 47])
    confident[planted] = 0.95  # above any class threshold, so these rows are confidently their class
    pred_probs = np.full((len(labels), 3), 0.0)
    pred_probs[np.arange(len(labels)), labels] = confident
    pred_probs[np.arange(len(labels)), (labels + 1) % 3] = 1 - confident
    assert not cl.find_label_issues(labels, pred_probs).any()

    noisy = labels.copy()
    noisy[planted] = (labels[planted] + 2) % 3  # given a class the model puts ~0 on
    issues = cl.find_label_issues(noisy, pred_probs)
    assert issues.dtype == bool and np.flatnonzero(issues).tolist() == planted.tolist()
    quality = cl.label_quality(noisy, pred_probs)
    assert quality[planted].max() < quality[~issues].min()


def test_binary_rare_class_thresholds_are_per_class():
    # Clicks are rare: a click predicted at 0.3 is confidently a click (t_1 is low), and an unclicked
    # row predicted at 0.5 confidently belongs to the click class.
    labels = np.array([0] * 8 + [1] * 2)
    p = np.array([0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.5, 0.3, 0.02])
    pred_probs = np.column_stack([1 - p, p])
    t = cl.class_thresholds(labels, pred_probs)
    assert t == pytest.approx([np.mean(1 - p[:8]), np.mean(p[8:])])
    assert np.flatnonzero(cl.find_label_issues(labels, pred_probs)).tolist() == [7, 9]
    joint = cl.confident_joint(labels, pred_probs)
    assert joint.tolist() == [[7, 1], [1, 1]]
    ranked = cl.issue_ranked_quality(labels, pred_probs)
    assert ranked[[7, 9]].max() < np.delete(ranked, [7, 9]).min()


def test_confident_learning_rejects_bad_arrays():
    with pytest.raises(ValueError, match="one row per label"):
        cl.find_label_issues(np.array([0, 1]), np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="labels must be integers"):
        cl.find_label_issues(np.array([0, 2]), np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="at least one labelled row"):
        cl.find_label_issues(np.array([0, 0]), np.ones((2, 2)) / 2)


# forgetting and AUM pieces

def test_forgetting_counts_on_a_hand_made_sequence():
    labels = np.array([1, 0, 1, 0, 1])
    probs = np.array([  # checkpoints x rows; threshold 0.2 (the click rate), not 0.5
        [0.3, 0.1, 0.1, 0.3, 0.9],
        [0.1, 0.1, 0.1, 0.1, 0.8],
        [0.3, 0.1, 0.1, 0.5, 0.1],
        [0.1, 0.1, 0.1, 0.5, 0.7],
    ])
    counts = training_dynamics.forgetting_counts(probs, labels, threshold=0.2)
    # learned, forgotten twice | always right | never learned: all 4 checkpoints | learned once,
    # forgotten once | forgotten once, relearned
    assert counts.tolist() == [2, 0, 4, 1, 1]


def test_checkpoints_are_spread_over_each_epoch():
    assert training_dynamics.checkpoint_steps(7, 2) == {4, 7}
    assert training_dynamics.checkpoint_steps(7, 1) == {7}
    assert training_dynamics.checkpoint_steps(3, 5) == {1, 2, 3}


def test_aum_is_lower_for_flipped_labels(synthetic, scores):
    ctx, flipped = synthetic
    aum = scores["aum"]["score"].to_numpy()
    train = ~ctx.data.holdout
    assert aum[train & flipped].mean() < 0 < aum[train & ~flipped].mean()
    assert roc_auc_score(flipped[train], -aum[train]) > 0.9
    # Holdout rows are never trained on and still scored from the checkpoints.
    assert roc_auc_score(flipped[~train], -aum[~train]) > 0.9


def test_forgetting_scores_are_minus_counts_with_a_small_tie_break(synthetic, scores):
    ctx, flipped = synthetic
    score = scores["forgetting"]["score"].to_numpy()
    counts = np.ceil(-score)
    checkpoints = 10 * 2
    assert counts.min() >= 0 and counts.max() <= checkpoints
    assert np.all(-score > counts - 0.5)  # the tie-break stays below one event
    assert roc_auc_score(flipped, -score) > 0.9
    assert counts[flipped].mean() > counts[~flipped].mean()


def test_confident_learning_flags_the_planted_flips(synthetic, scores):
    ctx, flipped = synthetic
    score = scores["confident_learning"]["score"].to_numpy()
    issues = score < 0
    assert roc_auc_score(flipped, -score) > 0.9
    # A flip near the decision boundary is not confidently the other class; one far from it is.
    clear = np.abs(ctx.data.x.dense[:, 0].numpy() - 0.5) > 1.0
    assert issues[flipped & clear].mean() > 0.8 and issues[~flipped].mean() < 0.1


# Data-OOB bookkeeping

def test_bootstrap_counts_draw_n_rows_per_bag():
    counts = data_oob.bootstrap_counts(50, 7, np.random.default_rng(1))
    assert counts.shape == (50, 7) and (counts.sum(axis=0) == 50).all()
    assert (counts == 0).any(axis=1).mean() > 0.5  # most rows are out of some bag
    assert np.array_equal(counts, data_oob.bootstrap_counts(50, 7, np.random.default_rng(1)))


def test_oob_mean_uses_only_the_bags_that_left_a_row_out():
    counts = np.array([[0, 1, 2, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    correct = np.array([[0.2, 9.0, 9.0, 0.4], [0.1, 0.2, 0.3, 0.6], [1.0, 0.0, 1.0, 0.0]])
    assert data_oob.oob_mean(correct, counts) == pytest.approx([0.3, 0.3, 0.5])


def test_data_oob_scores_each_row_from_its_out_of_bag_bags(synthetic, monkeypatch):
    ctx, _ = synthetic
    bags = ctx.params["importance"]["estimators"]["data_oob"]["bags"]
    # Each bag "predicts" its own index: a row's score then says which bags were averaged for it.
    monkeypatch.setattr(data_oob.BaggedHeads, "label_probs",
                        lambda self, batch: np.tile(np.arange(bags, dtype=np.float64), (len(batch), 1)))
    score = get("data_oob").score(ctx)["score"].to_numpy()
    train = ctx.data.train_index
    counts = data_oob.bootstrap_counts(len(train), bags, np.random.default_rng(ctx.seed))
    left_out = counts == 0
    oob_bag_mean = (left_out * np.arange(bags)).sum(axis=1) / np.maximum(left_out.sum(axis=1), 1)
    expected = np.where(left_out.any(axis=1), oob_bag_mean, np.arange(bags).mean())
    assert len(np.unique(expected)) > 10  # the check can tell rows apart
    np.testing.assert_allclose(score[train], expected)
    assert score[ctx.data.holdout_index] == pytest.approx(np.arange(bags).mean())


def test_data_oob_is_lower_for_flipped_labels(synthetic, scores):
    _, flipped = synthetic
    score = scores["data_oob"]["score"].to_numpy()
    assert ((score > 0) & (score < 1)).all()
    assert roc_auc_score(flipped, -score) > 0.9


# every estimator

@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_one_finite_score_per_event(name, synthetic, scores):
    ctx, _ = synthetic
    again = get(name).score(ctx)
    pd.testing.assert_frame_equal(scores[name], again)
    assert list(again.columns[:2]) == ["event_id", "score"] and len(again.columns) > 2  # evidence beside it
    assert np.isfinite(again.iloc[:, 2:].to_numpy()).all()
    assert again["event_id"].tolist() == ctx.data.impressions["event_id"].tolist()
    assert np.isfinite(again["score"]).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_log_without_clicks_is_refused(name):
    ctx, _ = synthetic_context(clicks=np.zeros(ROWS, dtype=np.float32))
    with pytest.raises(ValueError, match="every training impression has clicked=0"):
        get(name).score(ctx)


def test_more_folds_than_requests_is_refused(synthetic):
    ctx, _ = synthetic
    params = synthetic_params()
    params["importance"]["estimators"]["confident_learning"]["folds"] = 10_000
    with pytest.raises(ValueError, match="fewer than importance.estimators.confident_learning.folds=10000"):
        get("confident_learning").score(Context(ctx.data, params, ctx.seed, ctx.device))


@pytest.mark.parametrize("name, key, value", [("aum", "epochs", 0), ("data_oob", "bags", 0),
                                              ("forgetting", "tie_break", 1.0), ("confident_learning", "folds", 1)])
def test_bad_params_are_named(name, key, value, synthetic):
    ctx, _ = synthetic
    params = synthetic_params()
    params["importance"]["estimators"][name][key] = value
    with pytest.raises(ValueError, match=f"importance.estimators.{name}.{key}"):
        get(name).score(Context(ctx.data, params, ctx.seed, ctx.device))
