"""Scoring in shards: `--shard i/n` then `--combine` gives the same scores and weights as one unsharded
run; the shard assignment keeps sessions whole; incomplete or mixed shard sets are refused."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import DAY, tiny_params
from pipeline.importance import registry
from pipeline.stages import importance as stage
from pipeline.importance.sharding import Shard, parse_shard, shard_of_sessions, shard_rows


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    params = tiny_params()
    params["simulate"].update(impressions_per_day=1500, bot_session_rate=0.08)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "pipeline", "simulate", "--start", DAY, "--params", "params.yaml",
                    "--out", "raw"], check=True, capture_output=True, cwd=root)
    return root


def importance(root, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", "importance", "--data", "raw", "--params",
                           "params.yaml", *args], capture_output=True, text=True, cwd=root)


@pytest.mark.parametrize("text, shard", [("0/1", Shard(0, 1)), ("2/3", Shard(2, 3)), (" 0/4 ", Shard(0, 4))])
def test_shard_argument_is_parsed(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "0/0", "1/2/3"])
def test_bad_shard_argument_is_named(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_shards_partition_the_rows_and_keep_sessions_whole():
    sessions = pd.Series([f"s{i // 3}" for i in range(3000)])
    parts = [shard_rows(sessions, Shard(i, 4)) for i in range(4)]
    assert sorted(np.concatenate(parts)) == list(range(3000))
    assert all(len(p) > 500 for p in parts)  # roughly balanced
    for part in parts:
        other = np.setdiff1d(np.arange(3000), part)
        assert not set(sessions.iloc[part]) & set(sessions.iloc[other])


def test_shard_of_a_session_does_not_depend_on_row_order():
    sessions = pd.Series([f"s{i}" for i in range(500)])
    shuffled = sessions.sample(frac=1.0, random_state=3)
    assert (pd.Series(shard_of_sessions(sessions, 5), index=sessions.values)
            == pd.Series(shard_of_sessions(shuffled, 5), index=shuffled.values).loc[sessions.values]).all()


@pytest.mark.parametrize("estimator", ["click_model", "oof_loss"])
def test_sharded_scoring_then_combining_equals_unsharded_scoring(log, estimator):
    whole = importance(log, "--estimator", estimator, "--out", f"whole-{estimator}")
    assert whole.returncode == 0, whole.stderr
    shards = []
    for i in range(3):
        result = importance(log, "--estimator", estimator, "--shard", f"{i}/3", "--out", f"{estimator}-{i}")
        assert result.returncode == 0, result.stderr
        shards.append(f"{estimator}-{i}")
        part = pd.read_parquet(log / f"{estimator}-{i}" / "scores.parquet")
        assert list(part.columns[:2]) == ["event_id", "score"] and 0 < len(part) < 1500
        assert part.columns[2:].str.startswith("evidence_").all() and len(part.columns) > 2
    combined = importance(log, "--estimator", estimator, "--combine", *shards, "--out", f"combined-{estimator}")
    assert combined.returncode == 0, combined.stderr
    expected = pd.read_parquet(log / f"whole-{estimator}" / "scores.parquet")
    got = pd.read_parquet(log / f"combined-{estimator}" / "scores.parquet")
    pd.testing.assert_frame_equal(got, expected)
    assert (log / f"combined-{estimator}" / "report.html").is_file()


def test_combining_an_incomplete_or_mixed_set_of_shards_is_refused(log):
    for i in (0, 1):
        assert importance(log, "--estimator", "click_model", "--shard", f"{i}/3", "--out", f"cm-{i}").returncode == 0
    missing = importance(log, "--estimator", "click_model", "--combine", "cm-0", "cm-1", "--out", "combined")
    assert missing.returncode == 2 and "missing [2]" in missing.stderr
    doubled = importance(log, "--estimator", "click_model", "--combine", "cm-0", "cm-0", "cm-1", "--out", "combined")
    assert doubled.returncode == 2 and "given twice [0]" in doubled.stderr
    other = importance(log, "--estimator", "position_ipw", "--combine", "cm-0", "cm-1", "--out", "combined")
    assert other.returncode == 2 and "scored with 'click_model', not 'position_ipw'" in other.stderr
    assert not (log / "combined").exists()


def test_shard_and_combine_together_or_a_shard_into_a_file_are_refused(log):
    both = importance(log, "--estimator", "click_model", "--shard", "0/2", "--combine", "x", "--out", "o")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    into_file = importance(log, "--estimator", "click_model", "--shard", "0/2", "--out", "o.parquet")
    assert into_file.returncode == 2 and "give --out a folder" in into_file.stderr


def test_an_estimator_that_needs_the_whole_log_refuses_a_shard(log):
    name = "whole_log_only_for_test"
    registry.register(name, "forward-only")(lambda ctx: ctx.select(np.zeros(len(ctx.data.impressions))))
    try:
        with pytest.raises(ValueError, match=f"{name}' does not score rows independently"):
            stage.run(log / "raw", None, None, log / "never", tiny_params(), name, Shard(0, 2))
        assert not (log / "never").exists()
    finally:
        registry._REGISTRY.pop(name)


def test_cluster_representatives_rule_gives_the_same_weights_sharded_and_whole(log):
    params = yaml.safe_load((log / "params.yaml").read_text())
    params["importance"]["cluster_representatives"] = {"clusters": 8, "keep_percent": 60, "iterations": 50}
    (log / "clusters.yaml").write_text(yaml.safe_dump(params))

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "pipeline", "importance", "--data", "raw", "--params",
                                 "clusters.yaml", "--estimator", "click_model", *args],
                                capture_output=True, text=True, cwd=log)
        assert result.returncode == 0, result.stderr

    run("--out", "clusters-whole")
    for i in range(2):
        run("--shard", f"{i}/2", "--out", f"clusters-{i}")
    run("--combine", "clusters-0", "clusters-1", "--out", "clusters-combined")
    whole = pd.read_parquet(log / "clusters-whole" / "scores.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(log / "clusters-combined" / "scores.parquet"), whole)
    zero = whole["weight"] == 0
    assert 0.3 < zero.mean() < 0.5  # about 40% pruned, cluster by cluster
