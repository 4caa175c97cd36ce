"""Each stage's outputs after the whole retrain ran through `dvc repro` on a tiny simulated day."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import DAY, run
from pipeline.model import embeddings, ranker
from pipeline.release import champions
from pipeline.data.contract import read_catalog, read_impressions
from pipeline.runplan import dvc_stage_names


def load(path):
    return json.loads(path.read_text())


def test_dvc_recorded_every_stage_for_the_day(completed_run):
    lock = yaml.safe_load((completed_run / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(dvc_stage_names(1, [DAY]))
    assert f"dt={DAY}" in " ".join(d["path"] for d in lock["stages"]["validate"]["deps"])
    status = run([sys.executable, "-m", "dvc", "status"], completed_run)
    assert "up to date" in status.stdout


def test_validate_wrote_data_docs_and_passed(completed_run):
    out = completed_run / f"work/validate/dt={DAY}"
    assert (out / "data_docs/index.html").is_file() and (out / "report.html").is_file()
    assert load(out / "summary.json")["success"] is True


def test_pretrain_saved_a_loadable_encoder_and_embedded_every_text(completed_run):
    from pipeline.model.encoder import load_encoder

    out = completed_run / "work/pretrain"
    tokenizer, encoder = load_encoder(out / "encoder")
    assert encoder.config.num_hidden_layers == 2  # the tiny test model
    assert load(out / "metrics.json")["steps"] == 4
    table = embeddings.load(out / "embeddings")
    impressions = read_impressions(completed_run / "data/raw", DAY)
    needed = set(read_catalog(completed_run / "data/raw", DAY)["title"]) | set(impressions["query"].dropna())
    assert needed <= set(table.texts)
    norms = np.linalg.norm(table.vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_importance_scores_and_weights_every_event(completed_run):
    scores = pd.read_parquet(completed_run / f"work/importance/dt={DAY}/scores.parquet")
    impressions = read_impressions(completed_run / "data/raw", DAY)
    assert sorted(scores["event_id"]) == sorted(impressions["event_id"])
    assert np.isfinite(scores["score"]).all() and (scores["weight"] > 0).all()
    assert scores["weight"].mean() == pytest.approx(1.0, abs=1e-6)
    assert scores["score"].std() > 0
    assert set(scores["split"]) == {"train", "holdout"}
    # Within a label (importance.balance_by), a higher score never gets a lower weight, and each
    # label keeps mean weight 1 so the reweighting does not shift the click rate.
    labelled = scores.merge(impressions[["event_id", "clicked"]], on="event_id")
    for _, group in labelled.groupby("clicked"):
        assert group["weight"].mean() == pytest.approx(1.0, abs=1e-6)
        ordered = group.sort_values("score")["weight"].to_numpy()
        assert (np.diff(ordered) >= -1e-12).all()


def test_importance_report_summarises_and_pseudonymises(completed_run):
    out = completed_run / f"work/importance/dt={DAY}"
    report = load(out / "report.json")
    impressions = read_impressions(completed_run / "data/raw", DAY)
    assert report["events"] == len(impressions) and report["estimator"] == "noise_mixture"
    assert len(report["lowest"]) == 20
    assert [r["score"] for r in report["lowest"]] == sorted(r["score"] for r in report["lowest"])
    assert {r["surface"] for r in report["by_surface"]} == set(impressions["surface"])
    assert sum(r["rows"] for r in report["by_position"]) == len(impressions)
    html = (out / "report.html").read_text()
    assert "<svg" in html and 'id="lowest"' in html
    # No raw user id leaves the report: only salted pseudonyms.
    raw_ids = set(impressions["user_id"])
    assert not any(user_id in html for user_id in raw_ids)
    assert all(r["user"].startswith("user-") for r in report["lowest"])


def test_train_saved_safetensors_that_predict(completed_run):
    model = ranker.load(completed_run / "work/train/model")
    assert (completed_run / "work/train/model/ranker.safetensors").is_file()
    loss = pd.read_csv(completed_run / "work/train/loss.csv")
    assert list(loss["epoch"]) == [1, 2]
    assert model.config.hidden == 32
    calibration = load(completed_run / "work/train/metrics.json")["calibration"]
    assert calibration["scale"] > 0
    assert model.click_calibration.tolist() == [pytest.approx(calibration["scale"], abs=1e-5),
                                                pytest.approx(calibration["shift"], abs=1e-5)]


def test_evaluate_scored_the_held_out_slice(completed_run):
    metrics = load(completed_run / "work/evaluate/metrics.json")
    impressions = read_impressions(completed_run / "data/raw", DAY)
    assert 0 < metrics["rows"] < len(impressions)
    cand = metrics["candidate"]
    assert set(cand) >= {"auc_click", "logloss_click", "ndcg_at_10"}
    assert 0.0 <= cand["auc_click"] <= 1.0 and 0.0 < cand["ndcg_at_10"] <= 1.0 and cand["logloss_click"] > 0
    assert metrics["champion"] is None
    calibration = pd.read_csv(completed_run / "work/evaluate/calibration.csv")
    assert calibration["rows"].sum() == metrics["rows"]


def test_gate_blessed_the_first_run_and_promote_switched_the_pointer(completed_run):
    decision = load(completed_run / "work/gate/decision.json")
    assert decision["decision"] == "BLESSED" and decision["without_baseline"]
    assert (completed_run / "work/gate/blessing").read_text().strip() == "BLESSED"
    promotion = load(completed_run / "work/promote/promotion.json")
    champion = champions.current(completed_run / "registry")
    assert promotion["promoted"] and champion["model_id"] == promotion["model_id"]
    assert len(champions.history(completed_run / "registry")) == 1


def test_metrics_and_plots_are_declared_to_dvc(completed_run):
    shown = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], completed_run)
    assert "auc_click" in shown.stdout
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "--json"], completed_run)
    assert "loss.csv" in plots.stdout and "calibration.csv" in plots.stdout
