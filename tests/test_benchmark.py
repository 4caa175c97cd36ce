"""The estimator benchmark: its measures on known inputs, the selection rule, and the command on a
tiny simulated log with two estimators."""
import json
import sys

import numpy as np
import pytest
import yaml

from conftest import DAY, run, tiny_params
from pipeline import benchmark_metrics as bm
from pipeline.selection import TRANSFORM_KEYS

DETECTION = {"auroc", "auprc", "f1_two_means", "recall_at_noise"}
TRANSFORMS = tiny_params()["benchmark"]["transforms"]
TEST = {"auc_click", "logloss_click", "ndcg_at_10"}


def test_two_means_splits_at_the_gap():
    scores = np.array([0.1, 5.0, 0.2, 5.2, 0.15, 4.9, 5.1])
    assert np.array_equal(bm.two_means_low(scores), scores < 1)
    assert not bm.two_means_low(np.ones(5)).any()


def test_detection_of_scores_that_put_every_noisy_row_lowest():
    is_noise = np.array([1, 0, 0, 1, 0, 0, 0, 0], bool)
    scores = np.where(is_noise, -1.0, 1.0) + np.linspace(0, 0.1, 8)
    values, curves = bm.detection(scores, is_noise, curve_points=50)
    assert values == {"auroc": 1.0, "auprc": 1.0, "f1_two_means": 1.0, "recall_at_noise": 1.0}
    assert curves["roc"]["tpr"][-1] == 1.0 and len(curves["pr"]["recall"]) <= 50
    flipped, _ = bm.detection(-scores, is_noise, curve_points=50)
    assert flipped["auroc"] == 0.0 and flipped["recall_at_noise"] == 0.0
    assert bm.detection(scores, np.zeros(8, bool), 50) == (dict.fromkeys(DETECTION), None)


def test_auroc_by_kind_scores_each_kind_against_the_clean_rows():
    kind = np.array(["", "", "", "a", "a", "b"], dtype=object)
    scores = np.array([1.0, 2.0, 3.0, 0.0, 0.5, 2.5])
    assert bm.auroc_by_kind(scores, kind) == {"a": 1.0, "b": pytest.approx(1 / 3)}


def test_recovery_is_undefined_when_the_noise_costs_nothing():
    assert bm.recovery(0.70, 0.68, 0.72, min_gap=0.001) == 0.5
    assert bm.recovery(0.70, 0.68, 0.6805, min_gap=0.001) is None


def test_recovery_standard_error_matches_the_spread_of_recoveries_over_seed_draws():
    rng = np.random.default_rng(0)
    seeds, true_recovery, gap = 10, 0.5, 0.007

    def draw():
        shared = rng.normal(0.72, 0.0025, seeds)  # what one seed does to every retrain alike
        unweighted = shared + rng.normal(0, 0.001, seeds)
        clean = shared + gap + rng.normal(0, 0.001, seeds)
        weighted = shared + true_recovery * gap + rng.normal(0, 0.002, seeds)
        return weighted, unweighted, clean

    draws = [draw() for _ in range(2000)]
    recoveries = [bm.recovery(w.mean(), u.mean(), c.mean(), 0.0) for w, u, c in draws]
    errors = [bm.recovery_standard_error(w, u, c, 0.0) for w, u, c in draws]
    assert abs(np.mean(recoveries) - true_recovery) < 0.02
    # The per-seed pairing removes the shared seed effect: the spread is that of the unshared parts.
    assert np.median(errors) == pytest.approx(np.std(recoveries), rel=0.2)
    assert np.std(recoveries) < 0.0025 / gap / np.sqrt(seeds)  # well below an unpaired error


def test_recovery_standard_error_is_none_without_two_seeds_or_a_gap():
    assert bm.recovery_standard_error([0.70], [0.68], [0.72], 0.001) is None
    assert bm.recovery_standard_error([0.70, 0.71], [0.68, 0.69], [0.6805, 0.6905], 0.001) is None
    # A weighted retrain exactly halfway on every seed has no uncertainty.
    assert bm.recovery_standard_error([0.70, 0.72], [0.68, 0.70], [0.72, 0.74], 0.001) == 0.0


def test_removal_drops_the_same_share_of_each_label():
    from pipeline.benchmark import kept_after_removal

    clicked = np.r_[np.ones(10, int), np.zeros(90, int)]
    scores = np.r_[np.arange(10) - 100.0, np.arange(90.0)]  # every click scores below every non-click
    low, high = kept_after_removal(scores, clicked, 0.2)
    assert (~low[:10]).sum() == 2 and (~low[10:]).sum() == 18  # 20% of each label, not the 20 clicks first
    assert not low[:2].any() and low[2:10].all() and not low[10:28].any()
    assert not high[8:10].any() and not high[82:].any() and high[10:82].all()


def entry(recovery, cost, kind="estimator", error=None):
    return {"kind": kind, "recovery": recovery, "cost_ratio": cost, "error": error}


def test_selection_takes_the_best_recovery_within_budget_and_breaks_ties_by_cost():
    estimators = {"slow_best": entry(0.9, 50.0), "good": entry(0.61, 3.0), "cheap_tie": entry(0.60, 0.5),
                  "weak": entry(0.2, 0.1), "broken": entry(None, None, error="ValueError: x"),
                  "random": entry(0.95, 0.0, kind="baseline")}
    name, reason = bm.select(estimators, max_cost_ratio=10, tie_tolerance=0.02)
    assert name == "cheap_tie"
    assert "tied within 0.02 with good" in reason and "slow_best" in reason and "broken" in reason
    assert bm.select(estimators, max_cost_ratio=10, tie_tolerance=0.0)[0] == "good"
    assert bm.select(estimators, max_cost_ratio=100, tie_tolerance=0.0)[0] == "slow_best"
    none, why = bm.select({"a": entry(None, 1.0)}, 10, 0.0)
    assert none is None and "recovery undefined: a" in why


def test_selection_can_require_beating_the_baselines():
    estimators = {"helps": entry(0.4, 1.0), "chance": entry(0.1, 0.5), "hurts": entry(-0.3, 0.1),
                  "random": entry(0.15, 0.0, kind="baseline"), "uniform": entry(0.0, 0.0, kind="baseline")}
    name, reason = bm.select(estimators, 10, 0.0, beat_baselines=True)
    assert name == "helps" and "not above the baselines' best (0.150): chance, hurts" in reason
    del estimators["helps"]
    assert bm.select(estimators, 10, 0.0)[0] == "chance"  # the rule alone takes the best, however poor
    none, why = bm.select(estimators, 10, 0.0, beat_baselines=True)
    assert none is None and "above the baselines'" in why and "chance, hurts" in why


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    params = tiny_params()
    # Recovery defined however little the noise costs on a tiny log; no tie, so the rule is exact.
    # beat_baselines off: on a tiny log every recovery is noise, and the test is about which one wins.
    params["benchmark"].update(removal_fractions=[0.1, 0.3], min_recovery_gap=0.0, tie_tolerance=0.0, train_seeds=2,
                               beat_baselines=False)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "-m", "pipeline", "simulate", "--start", DAY, "--days", "1", "--params", "params.yaml",
         "--out", "data/raw"], folder)
    return folder


def test_benchmark_command_measures_every_estimator_and_baseline_and_selects_the_better(tiny_log):
    run([sys.executable, "-m", "pipeline", "benchmark", "--data", "data/raw", "--noise",
         "false_click:0.2,bot_sessions:0.05", "--estimators", "click_model,oof_loss", "--params", "params.yaml",
         "--out", "out"], tiny_log)
    result = json.loads((tiny_log / "out/benchmark.json").read_text())
    assert set(result["estimators"]) == {"click_model", "oof_loss", "uniform", "random"}
    assert result["noise"]["noisy_rows"] == sum(result["noise"]["by_kind"].values()) > 0
    assert set(result["noise"]["by_kind"]) == {"false_click", "bot_sessions"}
    assert set(result["reference"]) == set(result["reference_runs"]) == {"clean", "unweighted", "oracle"}
    assert isinstance(result["oracle"]["recovery"], float) and isinstance(result["oracle"]["recovery_se"], float)
    assert all(len(runs) == 2 for runs in result["reference_runs"].values())  # benchmark.train_seeds
    for name, measured in result["estimators"].items():
        assert measured["error"] is None, name
        assert set(measured["detection"]) == DETECTION and set(measured["test"]) == TEST
        assert all(isinstance(v, float) for v in measured["detection"].values()), name
        assert all(isinstance(v, float) for v in measured["test"].values()), name
        assert isinstance(measured["recovery"], float) and isinstance(measured["cost_ratio"], float)
        assert isinstance(measured["recovery_se"], float) and len(measured["test_runs"]) == 2, name
        assert np.mean(measured["test_runs"]) == pytest.approx(measured["test"]["auc_click"], abs=1e-6), name
        if name != "uniform":
            assert len(measured["removal"]["lowest"]) == len(measured["removal"]["highest"]) == 2
            # Every candidate transform was retrained; the kept one has the best recovery of them.
            by_transform = measured["recovery_by_transform"]
            assert set(by_transform) == set(TRANSFORMS) and measured["transform"] in TRANSFORMS
            assert measured["recovery"] == max(by_transform.values()) == by_transform[measured["transform"]]
    assert result["estimators"]["uniform"]["recovery"] == 0.0
    # The simulator marks its own bots and stray clicks; they are neither injected noise nor clean.
    assert result["noise"]["log_noise_rows_not_measured"] > 0
    measured_rows = result["log"]["train_rows"] - result["noise"]["log_noise_rows_not_measured"]
    assert result["noise"]["share_of_measured"] == pytest.approx(result["noise"]["noisy_rows"] / measured_rows, abs=1e-6)
    for name, measured in result["estimators"].items():
        assert set(measured["auroc_by_kind"]) == {"false_click", "bot_sessions"}, name
    assert result["estimators"]["click_model"]["detection"]["auroc"] > 0.6  # bots click off the position curve
    # The selection names the estimator with the higher recovery (both are within the cost budget).
    ranked = sorted(("click_model", "oof_loss"), key=lambda n: -result["estimators"][n]["recovery"])
    assert all(result["estimators"][n]["cost_ratio"] <= result["selection"]["rule"]["max_cost_ratio"] for n in ranked)
    selection = json.loads((tiny_log / "out/selection.json").read_text())
    assert selection["estimator"] == result["selection"]["estimator"] == ranked[0]
    assert selection["reason"].startswith(ranked[0]) and ranked[1] in selection["reason"]
    # The selection carries the winner's best transform: params' knobs with that candidate's overrides.
    expected = {key: tiny_params()["importance"].get(key) for key in TRANSFORM_KEYS}
    expected.update(TRANSFORMS[result["estimators"][ranked[0]]["transform"]])
    assert selection["transform"] == result["selection"]["transform"] == expected
    html = (tiny_log / "out/report.html").read_text()
    assert "click_model" in html and "oof_loss" in html and selection["reason"] in html


def test_an_unknown_estimator_fails_before_anything_is_written(tiny_log):
    result = run([sys.executable, "-m", "pipeline", "benchmark", "--data", "data/raw", "--estimators",
                  "click_model,no_such", "--params", "params.yaml", "--out", "bad"], tiny_log, check=False)
    assert result.returncode != 0 and "no_such" in result.stderr and "known: all" in result.stderr
    assert not (tiny_log / "bad").exists()
    result = run([sys.executable, "-m", "pipeline", "benchmark", "--data", "data/raw", "--noise", "typo:0.1",
                  "--params", "params.yaml", "--out", "bad"], tiny_log, check=False)
    assert result.returncode != 0 and "typo:0.1" in result.stderr and not (tiny_log / "bad").exists()
    params = yaml.safe_load((tiny_log / "params.yaml").read_text())
    params["benchmark"]["transforms"] = {"soft": {"temprature": 3.0}}
    (tiny_log / "bad_params.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "pipeline", "benchmark", "--data", "data/raw", "--estimators", "click_model",
                  "--params", "bad_params.yaml", "--out", "bad"], tiny_log, check=False)
    assert result.returncode != 0 and "benchmark.transforms.soft" in result.stderr and "temprature" in result.stderr
    assert not (tiny_log / "bad").exists()


def test_benchmark_runs_on_a_log_without_the_simulators_extras(tiny_log):
    """Any log in the contract's shape: no truth folder, no f_* columns, no logged propensities."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.contract import DayPaths, impression_parts

    raw = tiny_log / "plain_raw"
    shutil.copytree(tiny_log / "data/raw", raw, ignore=shutil.ignore_patterns("_truth"))
    for part in impression_parts(DayPaths(raw, DAY)):
        table = pq.read_table(part)
        table = table.drop([name for name in table.column_names if name.startswith("f_")])
        column = table.schema.get_field_index("propensity")
        table = table.set_column(column, "propensity", pa.nulls(len(table), pa.float64()))
        pq.write_table(table, part)
    run([sys.executable, "-m", "pipeline", "benchmark", "--data", "plain_raw", "--noise", "missed_click:0.2,duplicates:0.05",
         "--estimators", "position_ipw", "--params", "params.yaml", "--out", "plain_out"], tiny_log)
    result = json.loads((tiny_log / "plain_out/benchmark.json").read_text())
    assert set(result["noise"]["by_kind"]) == {"missed_click", "duplicates"}
    measured = result["estimators"]["position_ipw"]
    assert measured["error"] is None and measured["detection"]["auroc"] is not None
    assert result["noise"]["by_kind"]["duplicates"] > 0 and result["noise"]["by_kind"]["missed_click"] > 0
    assert result["noise"]["log_noise_rows_not_measured"] == 0  # no truth files: every row is measured
