"""Every registered importance estimator on a small simulated log with noise: one finite score per
event, noisy rows scored lower than clean ones, weights finite, non-negative, mean 1; bad input fails
with a clear message."""
import copy
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from conftest import DAY, tiny_params
from pipeline.data.contract import DayPaths
from pipeline.importance import registry
from pipeline.importance.weights import to_weights

ROWS = 4000


def noisy_params() -> dict:
    params = tiny_params()
    params["simulate"].update(impressions_per_day=ROWS, bot_session_rate=0.08, accidental_click_rate=0.03,
                              missed_click_rate=0.05)
    return params


@pytest.fixture(scope="module")
def noisy_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy")
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(noisy_params()))
    subprocess.run([sys.executable, "-m", "pipeline", "simulate", "--start", DAY, "--params", str(params_file),
                    "--out", str(root / "raw")], check=True, capture_output=True)
    return root


@pytest.fixture(scope="module")
def context(noisy_log):
    from pipeline.compute import setup
    from pipeline.model.dataset import load_log

    params = noisy_params()
    data = load_log(noisy_log / "raw", None, None, params)
    return registry.Context(data, params, seed=7, device=setup(params, 7))


@pytest.fixture(scope="module")
def truth(noisy_log):
    return pd.read_parquet(DayPaths(noisy_log / "raw", DAY).truth_file)


@pytest.fixture(scope="module")
def full_scores(context):
    """Each estimator's scores for every row, computed once per module."""
    cache = {}

    def scores(name):
        if name not in cache:
            cache[name] = registry.get(name).score(context)
        return cache[name]
    return scores


def test_registry_lists_estimators_with_cost_classes():
    estimators = registry.available()
    assert "oof_loss" in estimators
    assert all(e.cost_class in registry.COST_CLASSES for e in estimators.values())


# learned_weights ranks this log's noise above its clean rows (AUROC 0.45): it gives nearly every unclicked
# row in the top five positions weight 0, and those are clean. Known and reported; strict, so a fix shows
# up here.
INVERTED = {"learned_weights": "meta-reweighting zeroes the unclicked top-five rows of this log"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.xfail(reason=INVERTED[name], strict=True))
                                  if name in INVERTED else name for name in sorted(registry.available())])
def test_estimator_scores_noise_lower_than_clean_rows(name, context, truth, full_scores):
    scores = full_scores(name)
    assert list(scores.columns[:2]) == ["event_id", "score"]
    assert scores["event_id"].is_unique and set(scores["event_id"]) == set(context.data.impressions["event_id"])
    assert np.isfinite(scores["score"]).all()
    evidence = scores.columns[2:]
    assert len(evidence) and evidence.str.startswith("evidence_").all(), f"{name}: no evidence columns"
    assert np.isfinite(scores[evidence].to_numpy()).all()
    merged = scores.merge(truth, on="event_id")
    assert merged["is_noise"].mean() > 0.03  # the log really is noisy
    auroc = roc_auc_score(merged["is_noise"], -merged["score"])
    assert auroc > 0.6, f"{name}: detection AUROC {auroc:.3f}"
    weights = to_weights(merged["score"].to_numpy(), 1.0, (0.1, 3.0))
    assert np.isfinite(weights).all() and (weights >= 0).all()
    assert weights.mean() == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(n for n, e in registry.available().items() if e.shardable))
def test_a_shardable_estimator_scores_a_shard_as_it_scores_the_whole_log(name, context, full_scores):
    from dataclasses import replace

    from pipeline.importance.sharding import Shard, shard_rows

    rows = shard_rows(context.data.impressions["session_id"], Shard(1, 3))
    part = registry.get(name).score(replace(context, rows=rows))
    assert list(part["event_id"]) == list(context.data.impressions["event_id"].iloc[rows])
    whole = full_scores(name).set_index("event_id")
    assert list(part.columns) == ["event_id", *whole.columns]
    for column in whole.columns:  # the score and the evidence it comes from
        np.testing.assert_allclose(part[column].to_numpy(), whole.loc[part["event_id"], column].to_numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=column)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", "importance", *args], capture_output=True, text=True,
                          cwd=cwd)


def write_params(folder):
    (folder / "params.yaml").write_text(yaml.safe_dump(noisy_params()))


def test_cli_writes_a_scores_file_for_any_log(noisy_log, tmp_path):
    write_params(tmp_path)
    result = cli("--data", str(noisy_log / "raw"), "--estimator", "oof_loss", "--out", "scores.parquet",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(table.columns) == ["event_id", "score", "weight", "split", "reason", "evidence_out_of_fold_loss"]
    assert len(table) > 0.9 * ROWS
    np.testing.assert_allclose(table["evidence_out_of_fold_loss"], -table["score"])
    low = table["weight"] < 0.5
    assert set(table.loc[low, "reason"]) <= {"high out-of-fold loss"} and low.any()
    assert set(table.loc[~low & (table["weight"] <= 2.0), "reason"]) == {"typical weight"}
    assert table["weight"].mean() == pytest.approx(1.0)


def test_unknown_estimator_is_named(noisy_log, tmp_path):
    write_params(tmp_path)
    result = cli("--data", str(noisy_log / "raw"), "--estimator", "astrology", "--out", "s.parquet", cwd=tmp_path)
    assert result.returncode == 2 and "unknown importance estimator 'astrology'" in result.stderr
    assert "oof_loss" in result.stderr and not (tmp_path / "s.parquet").exists()


def rewrite_day(noisy_log, tmp_path, edit):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "raw"
    shutil.copytree(noisy_log / "raw", data)
    part = DayPaths(data, DAY).impressions_dir / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(pa.Table.from_pandas(edit(table.to_pandas()), schema=table.schema, preserve_index=False), part)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.iloc[0:0], "the log has no impressions"),
    (lambda f: f.assign(clicked=0, purchased=0), "every impression has clicked=0"),
    (lambda f: f.assign(price=np.where(np.arange(len(f)) == 5, np.inf, f["price"])), "feature log_price is not finite"),
])
def test_bad_logs_fail_with_a_clear_message(noisy_log, tmp_path, edit, message):
    write_params(tmp_path)
    data = rewrite_day(noisy_log, tmp_path, edit)
    result = cli("--data", str(data), "--estimator", "oof_loss", "--out", "s.parquet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.parquet").exists()


@pytest.mark.parametrize("name, knob", [("oof_loss", "importance.folds"),
                                        ("noise_mixture", "importance.estimators.noise_mixture.folds"),
                                        ("confident_learning", "importance.estimators.confident_learning.folds"),
                                        ("el2n", "importance.estimators.el2n.folds")])
def test_cross_fitting_with_fewer_than_two_folds_is_refused_by_its_knob(name, knob, context):
    from dataclasses import replace

    params = copy.deepcopy(context.params)
    section = params["importance"] if name == "oof_loss" else params["importance"]["estimators"][name]
    section["folds"] = 1
    with pytest.raises(ValueError, match=f"{re.escape(knob)} must be at least 2, got 1"):
        registry.get(name).score(replace(context, params=params))
