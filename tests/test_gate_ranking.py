"""The gate's ranking checks on metrics computed the way evaluate computes them (Scorer, baselines,
paired bootstrap) from a synthetic log with a known true relevance, judged by the project's gate params:
a constant score, a candidate no better than a trivial baseline, a change inside the noise, a clear
regression and a good candidate against a trivial champion."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.model import baselines as b
from pipeline.model import metrics as m
from pipeline.model.evaluation import Scorer, ranking_comparison, rounded
from pipeline.release.gate import RANKING_KEYS, decide

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
GATE = PARAMS["gate"]
RANKING = {key: GATE[key] for key in RANKING_KEYS}
CHECKS = {"auc_click": {"direction": "higher", "max_regression": 0.01}}
CFG = {**PARAMS["evaluate"], "bootstrap": {"resamples": 200, "level": 0.95}}


def day(n_requests=600, length=10, seed=0):
    rng = np.random.default_rng(seed)
    n = n_requests * length
    relevance = rng.random(n)
    # The log shows items in a noisy order of relevance; clicks follow examination x relevance.
    order_key = relevance + rng.normal(0, 0.6, n)
    frame = pd.DataFrame({"request_id": np.repeat(np.arange(n_requests), length), "key": order_key,
                          "relevance": relevance, "item_id": [f"i{j}" for j in rng.integers(0, 500, n)],
                          "surface": np.repeat(np.where(np.arange(n_requests) % 2, "search", "recommend"), length)})
    frame = frame.sort_values(["request_id", "key"], ascending=[True, False]).reset_index(drop=True)
    frame["position"] = frame.groupby("request_id").cumcount() + 1
    frame["clicked"] = (rng.random(n) < frame["relevance"] ** 2 * frame["position"] ** -0.9).astype(int)
    frame["purchased"] = 0
    frame["request_id"] = frame["request_id"].map(lambda r: f"r{r}")
    return frame, rng


def model(score):
    p = 1 / (1 + np.exp(-(3 * score - 2)))
    return {"p_click": p, "p_purchase": p / 10, "score": score}


def evaluated(candidate_score, champion_score=None, seed=0, n_requests=600):
    """metrics.json as evaluate writes it for these scores (a function of (relevance, rng) each)."""
    frame, rng = day(n_requests, seed=seed)
    half = frame["request_id"].isin(frame["request_id"].unique()[: n_requests // 2]).to_numpy()
    train, held = frame[half], frame[~half].reset_index(drop=True)
    rel = held["relevance"].to_numpy()
    scorer = Scorer(held, CFG, relevance=rel,
                    ips_gains=m.ips_gains(held["clicked"], held["position"], 0.9, 0.05), seed=3)
    cand = model(np.asarray(candidate_score(rel, rng), dtype=np.float64))
    models = {"candidate": (cand, scorer.ranks(cand["score"]))}
    if champion_score is not None:
        champ = model(np.asarray(champion_score(rel, rng), dtype=np.float64))
        models["champion"] = (champ, scorer.ranks(champ["score"]))
    dense = np.stack([rel + rng.normal(0, 1.0, len(rel)), np.zeros(len(rel))], axis=1)
    everywhere = np.ones(len(held), dtype=bool)
    trivial = {"random": (b.random_scores(len(held), 1), everywhere),
               "logging_order": (b.logging_scores(held["position"]), everywhere),
               "popularity": (b.popularity_scores(train, held["item_id"], 20), everywhere),
               "encoder_cosine": (b.cosine_scores(dense, ["query_title_cosine", "x"]),
                                  held["surface"].to_numpy() == "search")}
    ranking, boot = ranking_comparison(scorer, held, models, trivial, CFG, seed=5)
    ranking["truth"] = {"available": True}
    spread = m.score_spread(scorer.groups, cand["score"])
    return {"day": "2026-11-01", "rows": len(held), "clicks": int(held["clicked"].sum()), "purchases": 0,
            "candidate": {**scorer.score(*models["candidate"]), "score_spread": rounded(spread)["std"]},
            "champion": scorer.score(*models["champion"]) if "champion" in models else None,
            "champion_id": "champ" if "champion" in models else None, "primary_metric": scorer.primary,
            "ranking": ranking, "bootstrap": boot}


def gate(metrics):
    return decide(metrics, CHECKS, min_slice_rows=GATE["min_slice_rows"], ranking=RANKING)


def good(rel, rng):
    return rel + rng.normal(0, 0.1, len(rel))


def test_a_constant_score_is_never_blessed_and_the_spread_check_decides():
    decision = gate(evaluated(lambda rel, rng: np.full(len(rel), 0.4)))
    assert decision["decision"] == "NOT_BLESSED"
    assert decision["deciding_check"]["kind"] == "score_spread"
    assert decision["deciding_check"]["metric"] == "score_spread"
    assert decision["reason"].startswith("decided by the score_spread check on score_spread (overall)")
    # It ranks like random, so the baseline check fails too.
    assert ("ndcg_at_10_true", "overall", "baseline") in {(c["metric"], c["slice"], c["kind"])
                                                        for c in decision["checks"] if not c["passed"]}


def test_a_nearly_constant_score_is_not_blessed():
    decision = gate(evaluated(lambda rel, rng: 0.4 + 1e-7 * rel))
    assert not decision["blessed"] and decision["deciding_check"]["kind"] == "score_spread"


@pytest.mark.parametrize("copied", ["logging_order", "random"])
def test_a_candidate_equal_to_a_baseline_is_not_blessed(copied):
    def like_baseline(rel, rng):
        frame, _ = day()
        held = frame.iloc[len(frame) // 2:]
        return (-held["position"].to_numpy(dtype=float) if copied == "logging_order"
                else b.random_scores(len(rel), 1))
    metrics = evaluated(like_baseline)
    decision = gate(metrics)
    assert decision["decision"] == "NOT_BLESSED"
    decider = decision["deciding_check"]
    assert (decider["kind"], decider["metric"]) == ("baseline", "ndcg_at_10_true")
    assert "best baseline" in decision["reason"] and "baseline_margin" in decision["reason"]


def test_a_good_candidate_against_a_trivial_champion_is_blessed():
    metrics = evaluated(good, lambda rel, rng: rng.random(len(rel)))
    decision = gate(metrics)
    assert decision["decision"] == "BLESSED", decision["reason"]
    assert decision["deciding_check"]["kind"] == "baseline" and decision["deciding_check"]["slice"] == "overall"
    assert "deciding check: baseline on ndcg_at_10_true (overall)" in decision["reason"]
    baseline_checks = {c["slice"] for c in decision["checks"] if c["kind"] == "baseline"}
    assert baseline_checks == {"overall", "surface=search", "surface=recommend"}
    search = next(c for c in decision["checks"] if c["kind"] == "baseline" and c["slice"] == "surface=search")
    assert search["interval"]["upper"] >= 0 and search["passed"]


def test_a_candidate_worse_than_a_baseline_on_one_surface_is_not_blessed():
    """Better overall is not enough: a surface where the best baseline is clearly better blocks."""
    frame, rel = day()
    held = frame.iloc[len(frame) // 2:].reset_index(drop=True)
    search = (held["surface"] == "search").to_numpy()

    def good_but_search_inverted(rel, rng):
        return np.where(search, -rel, rel)
    decision = gate(evaluated(good_but_search_inverted))
    failed = [c for c in decision["checks"] if not c["passed"]]
    assert decision["decision"] == "NOT_BLESSED"
    assert any(c["kind"] == "baseline" and c["slice"] == "surface=search" for c in failed)


def test_a_difference_inside_the_bootstrap_noise_does_not_block():
    # Two equally good models (different noise): the bare difference may exceed max_regression, the
    # interval says it is noise.
    metrics = evaluated(good, lambda rel, rng: rel + rng.normal(0, 0.1, len(rel)), n_requests=200)
    interval = metrics["bootstrap"]["candidate_minus_champion"]["overall"]["ndcg_at_10_true"]
    assert interval["lower"] < 0 < interval["upper"]
    strict = {**RANKING, "primary": {"max_regression": 0.0}}
    decision = decide(metrics, CHECKS, min_slice_rows=0, ranking={**strict, "baseline_margin": 0.0})
    change = next(c for c in decision["checks"] if c["kind"] == "change" and c["metric"] == "ndcg_at_10_true")
    assert change["passed"] and "not significantly worse" in change["detail"]


def test_a_clear_regression_blocks():
    metrics = evaluated(lambda rel, rng: rel + rng.normal(0, 0.5, len(rel)), good)
    decision = gate(metrics)
    assert decision["decision"] == "NOT_BLESSED"
    failed = {(c["metric"], c["kind"]) for c in decision["checks"] if not c["passed"]}
    assert ("ndcg_at_10_true", "change") in failed
    change = next(c for c in decision["checks"] if c["kind"] == "change" and c["metric"] == "ndcg_at_10_true")
    assert change["interval"]["upper"] < -GATE["primary"]["max_regression"]


def test_an_undefined_primary_metric_fails_and_says_so():
    metrics = evaluated(good)
    metrics["candidate"]["ndcg_at_10_true"] = None
    decision = gate(metrics)
    assert not decision["blessed"]
    assert decision["deciding_check"]["kind"] == "defined"
    assert "ndcg_at_10_true (the primary ranking metric) is undefined" in decision["reason"]


def test_without_truth_the_logging_order_is_not_a_baseline_to_beat():
    metrics = evaluated(good)
    metrics["ranking"]["truth"] = {"available": False}
    decision = gate(metrics)
    assert all(c["baseline_name"] != "logging_order" for c in decision["checks"] if c["kind"] == "baseline")


def test_bad_ranking_rules_are_clear_errors():
    metrics = evaluated(good)
    with pytest.raises(KeyError, match="gate.min_score_spread is missing"):
        decide(metrics, CHECKS, ranking={k: v for k, v in RANKING.items() if k != "min_score_spread"})
    with pytest.raises(ValueError, match="gate.baseline_margin must be a number >= 0"):
        decide(metrics, CHECKS, ranking={**RANKING, "baseline_margin": -1})
    with pytest.raises(ValueError, match="gate.primary: unknown key direction"):
        decide(metrics, CHECKS, ranking={**RANKING, "primary": {"direction": "lower", "max_regression": 0.1}})
