"""The curves the stages write for `dvc plots` (pipeline/reports/live.py), read from the session's tiny
run: every plot dvc.yaml declares renders, and each curve says what training and evaluation did,
checked against counts and computations made apart from the stages."""
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import precision_recall_curve, roc_curve

from conftest import DAY, ROOT, run
from pipeline.model.metrics import thinned

METRICS = "live/plots/metrics"
CUSTOM = "live/plots/custom"


def load(path):
    return json.loads(path.read_text())


def params(workspace) -> dict:
    return yaml.safe_load((workspace / "params.yaml").read_text())


def step_curve(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


@pytest.fixture(scope="module")
def shown(completed_run) -> dict:
    """`dvc plots show --json` of the tiny run: plot id -> its renders."""
    return json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], completed_run).stdout)


@pytest.fixture(scope="module")
def held_out_clicks(completed_run):
    """(clicked, p_click) of the held-out rows, predicted again here with the candidate as evaluate does."""
    import torch

    from pipeline.model import dataset, ranker

    data = dataset.load_day(completed_run / "data/raw", DAY, completed_run / "work/pretrain/embeddings",
                            params(completed_run))
    x = data.x.subset(torch.as_tensor(data.holdout_index))
    p_click = ranker.predict(ranker.load(completed_run / "work/train/model"), x, "cpu", True)["p_click"]
    return x.click.numpy(), np.asarray(p_click, dtype=np.float64)


def test_every_declared_plot_renders_with_data(shown):
    # A plot id may name the run's day (DVC interpolates it from run/context.yaml).
    declared = [(next(iter(p)) if isinstance(p, dict) else p).replace("${day}", DAY)
                for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]]
    assert not shown.get("errors"), shown.get("errors")
    rendered = {key.split("::")[-1]: renders for key, renders in shown["data"].items()}
    for plot_id in declared:
        assert rendered.get(plot_id), f"{plot_id} was not rendered"
        assert all(r["content"]["data"]["values"] for r in rendered[plot_id]), f"{plot_id} rendered no data"


def test_the_train_curve_has_one_finite_row_per_optimizer_step(completed_run):
    out = completed_run / "work/train"
    metrics, cfg = load(out / "metrics.json"), params(completed_run)["train"]
    loss = step_curve(out / f"{METRICS}/loss.tsv")
    rate = step_curve(out / f"{METRICS}/learning_rate.tsv")
    # One process: every epoch takes ceil(rows / batch) micro-batches, accumulation_steps to a step.
    per_epoch = math.ceil(math.ceil(metrics["train_rows"] / cfg["batch_size"]) / cfg["accumulation_steps"])
    assert metrics["steps"] == per_epoch * metrics["epochs"]
    assert list(loss["step"]) == list(range(1, metrics["steps"] + 1)) == list(rate["step"])
    assert np.isfinite(loss["loss"]).all() and (loss["loss"] > 0).all()
    assert (rate["learning_rate"] == cfg["learning_rate"]).all()
    epochs = pd.read_csv(out / "loss.csv")
    assert list(epochs.columns) == ["epoch", "weighted_loss", "validation_loss"]
    assert len(epochs) == metrics["epochs"] and np.isfinite(epochs[["weighted_loss", "validation_loss"]]).all(axis=None)


def test_the_pretrain_curve_has_a_row_per_refresh_step_and_its_parts(completed_run):
    out = completed_run / "work/pretrain"
    steps, cfg = load(out / "metrics.json")["steps"], params(completed_run)["pretrain"]
    total = step_curve(out / f"{METRICS}/loss.tsv")
    contrastive = step_curve(out / f"{METRICS}/contrastive_loss.tsv")
    mlm = step_curve(out / f"{METRICS}/mlm_loss.tsv")
    assert steps > 0 and list(total["step"]) == list(range(1, steps + 1)) == list(contrastive["step"])
    assert np.isfinite(total["loss"]).all()
    mlm_part = cfg["mlm_weight"] * (mlm["mlm_loss"].to_numpy() if len(mlm) else 0.0)
    expected = mlm_part + cfg["contrastive"]["weight"] * contrastive["contrastive_loss"].to_numpy()
    np.testing.assert_allclose(total["loss"], expected, atol=2e-6)
    assert len(mlm) == (steps if cfg["mlm_weight"] > 0 else 0)


def test_roc_and_precision_recall_points_are_scikit_learns(completed_run, held_out_clicks):
    clicked, p_click = held_out_clicks
    metrics, points = load(completed_run / "work/evaluate/metrics.json"), params(completed_run)["evaluate"]["curve_points"]
    assert len(clicked) == metrics["rows"]
    fpr, tpr, _ = roc_curve(clicked, p_click)
    # The predictions here are the ones evaluate scored: the full curve's area is its click AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics["candidate"]["auc_click"], abs=1e-5)
    roc = load(completed_run / f"work/evaluate/{CUSTOM}/roc.json")
    keep = thinned(len(fpr), points)
    assert len(roc) == len(keep) <= points
    np.testing.assert_allclose([[r["fpr"], r["tpr"]] for r in roc], np.c_[fpr[keep], tpr[keep]], atol=1e-6)
    precision, recall, _ = precision_recall_curve(clicked, p_click)
    pr = load(completed_run / f"work/evaluate/{CUSTOM}/precision_recall.json")
    keep = thinned(len(recall), points)
    np.testing.assert_allclose([[r["recall"], r["precision"]] for r in pr],
                               np.c_[recall[::-1][keep], precision[::-1][keep]], atol=1e-6)


def test_importance_histograms_count_every_scored_row(completed_run):
    scores = pd.read_parquet(completed_run / f"work/importance/dt={DAY}/scores.parquet")
    bins = params(completed_run)["importance"]["report"]["histogram_bins"]
    for column in ("score", "weight"):
        table = load(completed_run / f"work/importance/dt={DAY}/{CUSTOM}/{column}_histogram.json")
        assert len(table) == bins and sum(r["rows"] for r in table) == len(scores)
        assert [r["label"] for r in table] == sorted(r["label"] for r in table)  # the chart keeps bin order
        assert table[0]["lower"] == pytest.approx(scores[column].min(), abs=1e-6)
        assert table[-1]["upper"] == pytest.approx(scores[column].max(), abs=1e-6)
