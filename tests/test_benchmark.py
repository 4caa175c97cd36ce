"""The estimator benchmark: its measures on known inputs, the selection rule, and the command on a
tiny simulated log with two estimators."""
import json
import sys

import numpy as np
import pytest
import yaml

from conftest import DAY, run, tiny_params
from pipeline.importance.benchmark import metrics as bm
from pipeline.importance.selection import TRANSFORM_KEYS

DETECTION = {"auroc", "auprc", "f1_two_means", "recall_at_noise"}
TRANSFORMS = tiny_params()["benchmark"]["transforms"]
TEST = {"auc_click", "logloss_click", "ndcg_at_10", "ndcg_at_10_true"}
RECOVERED = ("ndcg_at_10_true", "auc_click")


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


def test_recovery_is_undefined_when_the_clean_ranker_is_not_better_whatever_the_gap():
    """The sign, not only the size: a clean ranker worse than the unweighted one would flip the ratio's sign
    (here a weighted ranker worse than both would get +2.0)."""
    assert bm.recovery(0.70, 0.72, 0.71, min_gap=0.001) is None
    assert bm.recovery(0.73, 0.72, 0.71, min_gap=0.001) is None
    assert bm.recovery(0.70, 0.72, 0.72, min_gap=0.0) is None      # no cost at all, not a division by zero
    assert bm.recovery_standard_error([0.70, 0.69], [0.72, 0.73], [0.71, 0.72], 0.001) is None
    assert bm.recovery_standard_error([0.70, 0.69], [0.72, 0.72], [0.72, 0.72], 0.0) is None
    # A metric where lower is better: the clean ranker must be lower.
    assert bm.recovery(0.30, 0.31, 0.29, 0.001, higher_is_better=False) == 0.5
    assert bm.recovery(0.30, 0.29, 0.31, 0.001, higher_is_better=False) is None
    assert bm.recovery_standard_error([0.30, 0.31], [0.31, 0.32], [0.29, 0.30], 0.001, higher_is_better=False) == 0.0
    assert bm.recovery_standard_error([0.30, 0.31], [0.29, 0.30], [0.31, 0.32], 0.001, higher_is_better=False) is None
    assert bm.noise_cost(0.72, 0.71) == pytest.approx(-0.01) and bm.noise_cost(0.31, 0.29, False) == pytest.approx(0.02)


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
    from pipeline.importance.benchmark.run import kept_after_removal

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


class FakeBench:
    """The benchmark's scoring and recovery path (Bench.scored, Bench.retrained, retrain_result) on a
    hand-made test slice, with the trained rankers replaced by given predictions per (log, seed)."""

    def __init__(self, test, relevance, predictions: dict, metric: str = "ndcg_at_10_true", seeds: int = 4):
        from pipeline.importance.benchmark.bench import Bench, primary_metric
        from pipeline.model.evaluation import Scorer

        params = tiny_params()
        self.params = params
        self.cfg = {**params["benchmark"], "metric": metric, "train_seeds": seeds, "min_recovery_gap": 0.001}
        self.scorer = Scorer(test, params["evaluate"], relevance, seed=7)
        self.test_metrics_names = ["auc_click", "logloss_click", "ndcg_at_10", self.scorer.true_name]
        self.metric, _ = primary_metric(self.cfg, self.test_metrics_names, True, self.scorer.true_name)
        self.recovery_metrics = list(dict.fromkeys([self.metric, self.scorer.true_name, "auc_click"]))
        self.predictions = predictions
        self.noise_cost = {}
        self.scored = Bench.scored.__get__(self)
        self.retrained = Bench.retrained.__get__(self)

    def train(self, x, weights=None, epochs=None, run=0):
        return self.predictions[x][run]

    def test_metrics(self, model):
        return self.scored(model)


def ranking_case(seeds: int = 4, requests: int = 6, items: int = 14):
    """A test slice of `requests` requests of `items` rows (more than NDCG's cut-off of 10); one row of the
    last request has no true relevance, so that request drops out of the true NDCG. Per log and seed, a
    position-free score that follows the relevance more or less closely and a pCTR that follows the clicks."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n = requests * items
    test = pd.DataFrame({"request_id": np.repeat([f"r{i}" for i in range(requests)], items),
                         "clicked": (rng.random(n) < 0.3).astype(int)})
    test["purchased"] = test["clicked"] * (rng.random(n) < 0.3)
    relevance = rng.random(n).round(3)
    relevance[-3] = np.nan
    quality = {"clean": (1.0, 1.0), "unweighted": (0.3, 0.4), "weighted": (0.55, 0.9), "ranks_better": (0.8, 0.5)}
    predictions = {}
    for log, (ranking, clicks) in quality.items():
        predictions[log] = []
        for seed in range(seeds):
            noise = np.random.default_rng(100 + seed).normal(0, 0.6, n) + rng.normal(0, 0.2, n)
            score = ranking * np.nan_to_num(relevance) + (1 - ranking) * noise
            p_click = 1 / (1 + np.exp(-(clicks * 2 * (test["clicked"].to_numpy() - 0.5) + (1 - clicks) * noise)))
            predictions[log].append({"score": score + 1e-9 * np.arange(n), "p_click": p_click,
                                     "p_purchase": p_click / 3})
    return test, relevance, predictions


def brute_ndcg_at_10(test, relevance, score) -> float:
    values = []
    for request in test["request_id"].unique():
        rows = np.flatnonzero(test["request_id"].to_numpy() == request)
        if np.isnan(relevance[rows]).any():
            continue
        order = sorted(rows, key=lambda r: -score[r])[:10]
        dcg = sum(relevance[r] / np.log2(i + 2) for i, r in enumerate(order))
        ideal = sum(g / np.log2(i + 2) for i, g in enumerate(sorted(relevance[rows], reverse=True)[:10]))
        if ideal > 0:
            values.append(dcg / ideal)
    return float(np.mean(values))


def brute_auc(clicked, p_click) -> float:
    pos, neg = p_click[clicked == 1], p_click[clicked == 0]
    return float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))


def brute_recovery(weighted, unweighted, clean):
    w, u, c = map(np.asarray, (weighted, unweighted, clean))
    ratio = (w.mean() - u.mean()) / (c.mean() - u.mean())
    residual = (w - u) - ratio * (c - u)
    return ratio, np.sqrt(np.sum((residual - residual.mean()) ** 2) / (len(w) - 1)) / np.sqrt(len(w)) / abs(
        c.mean() - u.mean())


def test_recovery_on_the_true_relevance_ndcg_matches_a_brute_force_computation():
    from pipeline.importance.benchmark.run import retrain_result

    test, relevance, predictions = ranking_case()
    bench = FakeBench(test, relevance, predictions)
    reference = {log: dict(zip(("test", "test_runs"), bench.retrained(log))) for log in ("clean", "unweighted")}
    weighted = retrain_result(bench, bench.retrained("weighted"), reference)
    clicked = test["clicked"].to_numpy()
    brute = {log: {"ndcg_at_10_true": [brute_ndcg_at_10(test, relevance, p["score"]) for p in predictions[log]],
                   "auc_click": [brute_auc(clicked, p["p_click"]) for p in predictions[log]]}
             for log in ("clean", "unweighted", "weighted")}
    for metric in ("ndcg_at_10_true", "auc_click"):
        assert weighted["test_runs"][metric] == pytest.approx(brute["weighted"][metric], abs=1e-6)
        assert weighted["test"][metric] == pytest.approx(np.mean(brute["weighted"][metric]), abs=1e-6)
        ratio, se = brute_recovery(brute["weighted"][metric], brute["unweighted"][metric], brute["clean"][metric])
        assert weighted["recovery_by_metric"][metric]["recovery"] == pytest.approx(ratio, abs=1e-4), metric
        assert weighted["recovery_by_metric"][metric]["recovery_se"] == pytest.approx(se, abs=1e-4), metric
    # The primary metric's recovery is the one the selection reads.
    assert weighted["recovery"] == weighted["recovery_by_metric"]["ndcg_at_10_true"]["recovery"]
    assert 0 < weighted["recovery_by_metric"]["ndcg_at_10_true"]["recovery"] < 1
    assert weighted["recovery_by_metric"]["ndcg_at_10_true"]["recovery"] != pytest.approx(
        weighted["recovery_by_metric"]["auc_click"]["recovery"], abs=0.05)


def test_selection_picks_by_the_ranking_metric_when_it_is_the_primary_one():
    """Two weightings that disagree: one retrains the better ranking score, the other the better click
    model. The selection follows benchmark.metric."""
    from pipeline.importance.benchmark.run import noise_costs, retrain_result

    test, relevance, predictions = ranking_case()
    picked = {}
    for metric in ("ndcg_at_10_true", "auc_click"):
        bench = FakeBench(test, relevance, predictions, metric=metric)
        reference = {log: dict(zip(("test", "test_runs"), bench.retrained(log))) for log in ("clean", "unweighted")}
        assert all(cost["recovery_defined"] for cost in noise_costs(bench, reference).values())
        estimators = {name: {"kind": "estimator", "cost_ratio": 1.0, "error": None,
                             **retrain_result(bench, bench.retrained(log), reference)}
                      for name, log in (("clicks_better", "weighted"), ("ranks_better", "ranks_better"))}
        by_metric = {name: e["recovery_by_metric"] for name, e in estimators.items()}
        assert by_metric["ranks_better"]["ndcg_at_10_true"]["recovery"] > by_metric["clicks_better"]["ndcg_at_10_true"]["recovery"]
        assert by_metric["ranks_better"]["auc_click"]["recovery"] < by_metric["clicks_better"]["auc_click"]["recovery"]
        picked[metric] = bm.select(estimators, 10, 0.0, metric=metric)
    assert picked["ndcg_at_10_true"][0] == "ranks_better" and picked["auc_click"][0] == "clicks_better"
    assert picked["ndcg_at_10_true"][1].startswith("ranks_better: recovery on ndcg_at_10_true ")


def test_recovery_is_undefined_and_says_why_when_the_noise_costs_nothing_on_the_metric():
    from pipeline.importance.benchmark.run import noise_costs, retrain_result

    test, relevance, predictions = ranking_case()
    # The "clean" ranker is the poor one: the noise did not cost the unweighted ranker anything.
    predictions = {**predictions, "clean": predictions["unweighted"], "unweighted": predictions["clean"]}
    bench = FakeBench(test, relevance, predictions)
    reference = {log: dict(zip(("test", "test_runs"), bench.retrained(log))) for log in ("clean", "unweighted")}
    costs = noise_costs(bench, reference)
    for metric in ("ndcg_at_10_true", "auc_click"):
        assert costs[metric]["cost"] < -0.01 and not costs[metric]["recovery_defined"]
        assert bm.NO_COST in costs[metric]["note"]
    weighted = retrain_result(bench, bench.retrained("weighted"), reference)
    assert weighted["recovery"] is None and weighted["recovery_se"] is None
    assert all(r == {"recovery": None, "recovery_se": None} for r in weighted["recovery_by_metric"].values())
    name, reason = bm.select({"a": {"kind": "estimator", "cost_ratio": 1.0, "error": None, **weighted}}, 10, 0.0,
                             metric="ndcg_at_10_true", undefined_reason=bm.NO_COST)
    assert name is None and f"recovery undefined ({bm.NO_COST}): a" in reason


def test_recovery_is_undefined_when_the_noise_cost_is_within_its_seed_to_seed_spread():
    """A clean ranker ahead on average, but by less than benchmark.min_cost_se standard errors of the
    per-seed difference: the seeds cannot tell the cost from 0, and a recovery over it is noise over noise."""
    from pipeline.importance.benchmark.run import noise_costs, retrain_result

    test, relevance, predictions = ranking_case()
    # Clean: ahead on two seeds, behind on the other two, a little ahead on average.
    clean = [predictions["clean"][0], predictions["unweighted"][1], predictions["clean"][2], predictions["unweighted"][3]]
    mixed = {**predictions, "clean": clean}
    bench = FakeBench(test, relevance, mixed)
    bench.cfg["min_cost_se"] = 2.0
    reference = {log: dict(zip(("test", "test_runs"), bench.retrained(log))) for log in ("clean", "unweighted")}
    costs = noise_costs(bench, reference)
    runs = reference["clean"]["test_runs"]["ndcg_at_10_true"], reference["unweighted"]["test_runs"]["ndcg_at_10_true"]
    d = np.subtract(*runs)
    assert costs["ndcg_at_10_true"]["cost"] == pytest.approx(d.mean(), abs=1e-6) and d.mean() > 0
    assert costs["ndcg_at_10_true"]["cost_se"] == pytest.approx(d.std(ddof=1) / 2, abs=1e-6)
    assert costs["ndcg_at_10_true"]["cost"] < 2 * costs["ndcg_at_10_true"]["cost_se"]
    assert not costs["ndcg_at_10_true"]["recovery_defined"] and bm.UNCLEAR_COST in costs["ndcg_at_10_true"]["note"]
    bench.noise_cost = costs
    weighted = retrain_result(bench, bench.retrained("weighted"), reference)
    assert weighted["recovery_by_metric"]["ndcg_at_10_true"] == {"recovery": None, "recovery_se": None}
    assert weighted["recovery"] is None
    # With the check off, the same references give a (meaningless) ratio.
    bench.cfg["min_cost_se"] = 0.0
    bench.noise_cost = noise_costs(bench, reference)
    assert bench.noise_cost["ndcg_at_10_true"]["recovery_defined"]
    assert retrain_result(bench, bench.retrained("weighted"), reference)["recovery"] is not None


def test_primary_metric_falls_back_without_truth_and_bad_names_are_refused():
    from pipeline.importance.benchmark.bench import primary_metric
    from pipeline.importance.benchmark.run import check_metric

    cfg = {"metric": "ndcg_at_10_true", "fallback_metric": "auc_click"}
    names = ["auc_click", "logloss_click", "ndcg_at_10"]
    assert primary_metric(cfg, [*names, "ndcg_at_10_true"], True, "ndcg_at_10_true") == ("ndcg_at_10_true", None)
    metric, note = primary_metric(cfg, names, False, "ndcg_at_10_true")
    assert metric == "auc_click" and "no true relevance" in note and "ndcg_at_10_true" in note
    check_metric(cfg, 10)
    with pytest.raises(ValueError, match="evaluate.ndcg_k 5"):
        check_metric(cfg, 5)
    with pytest.raises(ValueError, match="benchmark.metric: 'auroc'"):
        check_metric({**cfg, "metric": "auroc"}, 10)
    with pytest.raises(ValueError, match="benchmark.fallback_metric"):
        check_metric({**cfg, "fallback_metric": "ndcg_at_10_true"}, 10)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    params = tiny_params()
    # Recovery defined however little the noise costs on a tiny log; no tie, so the rule is exact.
    # beat_baselines off: on a tiny log every recovery is noise, and the test is about which one wins.
    params["benchmark"].update(removal_fractions=[0.1, 0.3], min_recovery_gap=0.0, min_cost_se=0.0, tie_tolerance=0.0,
                               train_seeds=2, beat_baselines=False)
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
    # The simulator's truth is there: the primary metric is the true-relevance NDCG, recovery is on it and
    # on the click AUC.
    assert result["truth"] is True and result["primary_metric"] == "ndcg_at_10_true"
    assert result["primary_metric_note"] is None and result["recovery_metrics"] == list(RECOVERED)
    assert result["selection"]["rule"]["metric"] == "ndcg_at_10_true"
    assert set(result["noise_cost"]) == set(RECOVERED)
    assert set(result["trivial_rankers"]) == {"random", "logging_order"}
    assert 0 < result["trivial_rankers"]["random"]["ndcg_at_10_true"] < 1
    assert set(result["oracle"]["recovery_by_metric"]) == set(RECOVERED)
    assert all(set(runs) == set(RECOVERED) and all(len(r) == 2 for r in runs.values())  # benchmark.train_seeds
               for runs in result["reference_runs"].values())
    for name, measured in result["estimators"].items():
        assert measured["error"] is None, name
        assert set(measured["detection"]) == DETECTION and set(measured["test"]) == TEST
        assert all(isinstance(v, float) for v in measured["detection"].values()), name
        assert all(isinstance(v, float) for v in measured["test"].values()), name
        assert isinstance(measured["recovery"], float) and isinstance(measured["cost_ratio"], float)
        assert isinstance(measured["recovery_se"], float), name
        assert measured["recovery"] == measured["recovery_by_metric"]["ndcg_at_10_true"]["recovery"], name
        for metric in RECOVERED:
            assert len(measured["test_runs"][metric]) == 2, name
            assert np.mean(measured["test_runs"][metric]) == pytest.approx(measured["test"][metric], abs=1e-6), name
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

    from pipeline.data.contract import DayPaths, impression_parts

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
    # No truth: the click AUC is the primary metric, and the output says so.
    assert result["truth"] is False and result["primary_metric"] == "auc_click"
    assert "no true relevance" in result["primary_metric_note"] and result["recovery_metrics"] == ["auc_click"]
    assert "ndcg_at_10_true" not in measured["test"] and "no true relevance" in result["selection"]["reason"]
