"""Sparse logs judged with the counts behind their rates (issue 19): drift on a rate is chance unless
Fisher's test says otherwise; the gate does not decide on fewer held-out clicks than gate.min_clicks,
skips a metric the log cannot define, and names the params key of every threshold it applies."""
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from pipeline.data import drift
from pipeline.release.gate import decide

DRIFT = yaml.safe_load((ROOT / "params.yaml").read_text())["validate"]["drift"]


def fisher_two_sided(k: int, n: int, k_past: int, n_past: int) -> float:
    """Brute-force Fisher exact test: the hypergeometric tables as or less likely than the one seen."""
    total, events = n + n_past, k + k_past
    def prob(x):
        return math.comb(n, x) * math.comb(n_past, events - x) / math.comb(total, events)
    seen = prob(k)
    return sum(p for x in range(max(0, events - n_past), min(n, events) + 1) if (p := prob(x)) <= seen * (1 + 1e-7))


def a_day(requests: int, clicks_by_position: dict[int, int]) -> pd.DataFrame:
    """Lists of 10; exactly the given clicks at each position, the first requests' rows clicked."""
    position = np.tile(np.arange(1, 11), requests)
    clicked = np.zeros(len(position), int)
    for p, count in clicks_by_position.items():
        clicked[np.flatnonzero(position == p)[:count]] = 1
    return pd.DataFrame({"clicked": clicked, "purchased": 0, "position": position, "query": None,
                         "item_id": "i1", "price": 1.0, "propensity": np.nan})


def checks_of(today, earlier, cfg=DRIFT):
    report = drift.drift_report("2026-11-02", today, [("2026-11-01", earlier)], [], cfg)
    return {c["statistic"]: c for c in report["checks"]}


def test_no_click_at_a_sparse_position_is_chance_not_drift():
    """The Open Bandit finding: 0 clicks at position 2 where the earlier days expect ~2.7 is a 100%
    relative change but likely under chance, so it passes and says why, with the knobs."""
    checks = checks_of(a_day(140, {1: 3}), a_day(420, {1: 9, 2: 8}))
    at2 = checks["ctr_position_2"]
    assert at2["status"] == "passed" and at2["change"] == 1.0
    assert (at2["events"], at2["rows"], at2["expected_events"]) == (0, 140, 2.67)
    assert at2["p_value"] == pytest.approx(fisher_two_sided(0, 140, 8, 420), abs=1e-6)  # rounded to 6 places
    assert "within chance" in at2["detail"] and "validate.drift.rate_alpha" in at2["detail"]
    assert "validate.drift.checks.ctr_position" in at2["detail"]


def test_a_change_beyond_chance_still_fails_and_names_its_key():
    checks = checks_of(a_day(2000, {1: 600}), a_day(2000, {1: 200}))
    top = checks["ctr_position_1"]
    assert top["status"] == "failed" and top["p_value"] < DRIFT["rate_alpha"]
    assert "validate.drift.checks.ctr_position" in top["detail"]


def test_rate_alpha_zero_judges_the_bare_change():
    cfg = {**DRIFT, "rate_alpha": 0}
    at2 = checks_of(a_day(140, {1: 3}), a_day(420, {1: 9, 2: 8}), cfg)["ctr_position_2"]
    assert at2["status"] == "failed" and "p_value" not in at2


def test_first_clicks_after_none_is_not_an_infinite_change():
    checks = checks_of(a_day(300, {1: 1}), a_day(300, {}))
    ctr = checks["ctr"]
    assert ctr["status"] == "passed" and "up from 0" in ctr["detail"] and "inf" not in ctr["detail"]


CHECKS = {"auc_click": {"direction": "higher", "min_value": 0.55, "max_regression": 0.005},
          "auc_purchase": {"direction": "higher", "min_value": 0.55, "max_regression": 0.02}}


def items_day(rows: int, items: list[str]) -> pd.DataFrame:
    """`rows` impressions spread over `items` in turn, a few clicks, no queries."""
    frame = a_day(rows // 10, {1: 2})
    frame["item_id"] = [items[i % len(items)] for i in range(len(frame))]
    return frame


def fisher_greater(k: int, n: int, k_past: int, n_past: int) -> float:
    """Brute-force one-sided Fisher test: the tables with at least k events on the day."""
    total, events = n + n_past, k + k_past
    return sum(math.comb(n, x) * math.comb(n_past, events - x) / math.comb(total, events)
               for x in range(k, min(n, events) + 1))


def novelty_check(days: list[pd.DataFrame]) -> dict:
    dates = [f"2026-11-0{i + 1}" for i in range(len(days))]
    report = drift.drift_report(dates[-1], days[-1], list(zip(dates[:-1], days[:-1])), [], DRIFT)
    return {c["statistic"]: c for c in report["checks"]}["new_item_share"]


def test_a_large_catalog_showing_new_items_every_day_is_its_usual_novelty_not_drift():
    """Each day shows 600 items, 360 of them never shown before (60 % new rows, past the 0.5 fail
    threshold): the earlier days were as new, so the day is no drift, and the check says why."""
    days = [items_day(600, [f"d{d}-{i}" if i < 360 else f"shared-{i}" for i in range(600)]) for d in range(4)]
    check = novelty_check(days)
    assert check["value"] == pytest.approx(0.6) and check["status"] == "passed"
    assert (check["events"], check["rows"]) == (360, 600)
    assert check["expected_events"] == pytest.approx(360.0)  # two earlier days with a novelty: 720 of 1200
    assert "within chance" in check["detail"] and "validate.drift.checks.new_item_share" in check["detail"]


def earlier_novelty(days: list[pd.DataFrame]) -> tuple[int, int]:
    """Row by row: the earlier days' rows on items no day before them showed, and their rows, summed
    over the days that have a day before them."""
    new = rows = 0
    for d in range(1, len(days)):
        seen = {item for day in days[:d] for item in day["item_id"]}
        new += sum(item not in seen for item in days[d]["item_id"])
        rows += len(days[d])
    return new, rows


def test_a_day_far_newer_than_its_log_fails_and_a_few_new_rows_are_chance():
    usual = [items_day(1000, [f"i{i}" for i in range(60)] + [f"d{d}-{i}" for i in range(40)]) for d in range(3)]
    past_new, past_rows = earlier_novelty(usual)
    renamed = items_day(1000, [f"renamed-{i}" for i in range(110)])  # a catalog id remap: every row new
    failed = novelty_check([*usual, renamed])
    assert failed["status"] == "failed" and failed["value"] == 1.0
    assert failed["p_value"] == pytest.approx(fisher_greater(1000, 1000, past_new, past_rows), abs=1e-6)
    # A day of 20 rows, 12 on new items (past the 0.5 threshold) where the log's days run 40 % new:
    # chance at these counts.
    few = items_day(20, [f"i{i}" for i in range(8)] + [f"new-{i}" for i in range(12)])
    check = novelty_check([*usual, few])
    assert (check["events"], check["rows"]) == (12, 20) and check["value"] == 0.6
    assert check["p_value"] == pytest.approx(fisher_greater(12, 20, past_new, past_rows), abs=1e-6)
    assert check["p_value"] >= DRIFT["rate_alpha"] and check["status"] == "passed"
    assert "within chance" in check["detail"]


def test_the_second_day_has_no_earlier_novelty_and_its_thresholds_decide():
    first, second = items_day(500, [f"a{i}" for i in range(50)]), items_day(500, [f"b{i}" for i in range(50)])
    check = novelty_check([first, second])
    assert check["value"] == 1.0 and check["status"] == "failed" and "p_value" not in check


def held_out(clicks: int, purchases: int, auc_purchase=0.7, champion=None) -> dict:
    return {"day": "2026-11-02", "rows": 900, "clicks": clicks, "purchases": purchases,
            "candidate": {"auc_click": 0.7, "auc_purchase": auc_purchase}, "champion": champion,
            "champion_id": None if champion is None else "2026-11-01-abc"}


def test_fewer_clicks_than_the_minimum_is_not_enough_evidence():
    decision = decide(held_out(3, 1), CHECKS, min_clicks=30)
    assert decision["decision"] == "NOT_ENOUGH_EVIDENCE" and not decision["blessed"]
    assert decision["reason"].startswith("not enough evidence: 3 held-out clicks among 900 rows")
    assert "gate.min_clicks=30" in decision["reason"] and "champion is kept" in decision["reason"]
    assert decision["deciding_check"]["kind"] == "evidence"
    # The checks are still recorded; at the minimum the gate decides.
    assert decision["checks"] and decide(held_out(30, 1), CHECKS, min_clicks=30)["decision"] == "BLESSED"


def test_no_purchase_skips_auc_purchase_and_says_so():
    decision = decide(held_out(60, 0, auc_purchase=None), CHECKS, min_clicks=30)
    assert decision["decision"] == "BLESSED"
    assert [s["metric"] for s in decision["skipped"]] == ["auc_purchase"]
    assert "no purchase among the 900 held-out rows" in decision["skipped"][0]["reason"]
    assert "not enough evidence for auc_purchase" in decision["reason"]


def test_every_failed_threshold_names_its_params_key():
    champion = {"auc_click": 0.8, "auc_purchase": 0.9}
    slices = {"surface=search": {"rows": 600, "candidate": {"auc_click": 0.4, "auc_purchase": 0.7},
                                 "champion": champion}}
    candidate = {**held_out(60, 5, champion=champion), "slices": slices}
    candidate["candidate"]["auc_click"] = 0.5
    rules = {"auc_click": {"direction": "higher", "min_value": 0.5}}
    decision = decide(candidate, CHECKS, rules, min_slice_rows=100, min_clicks=30)
    details = {(c["slice"], c["metric"], c["kind"]): c["detail"] for c in decision["checks"] if not c["passed"]}
    assert "(gate.checks.auc_click.min_value)" in details[("overall", "auc_click", "value")]
    assert "(gate.checks.auc_click.max_regression)" in details[("overall", "auc_click", "change")]
    assert "(gate.checks.auc_purchase.max_regression)" in details[("overall", "auc_purchase", "change")]
    assert "(gate.slice_checks.auc_click.min_value)" in details[("surface=search", "auc_click", "value")]


@pytest.mark.parametrize("bad", [-1, 2.5, "ten", True])
def test_a_bad_minimum_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="gate.min_clicks"):
        decide(held_out(60, 5), CHECKS, min_clicks=bad)


def test_not_enough_evidence_through_gate_and_promote_keeps_the_champion(tmp_path):
    """The stage commands: gate exits 0 with the new decision, promote does not promote and says why."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["gate"] = {"checks": CHECKS, "min_slice_rows": 500, "min_clicks": 30}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "metrics.json").write_text(json.dumps(held_out(4, 0, auc_purchase=None)))
    def stage(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args, "--params", "params.yaml"],
                              cwd=tmp_path, capture_output=True, text=True)
    gated = stage("gate", "--metrics", "metrics.json", "--out", "gate")
    assert gated.returncode == 0, gated.stderr
    assert (tmp_path / "gate" / "blessing").read_text() == "NOT_ENOUGH_EVIDENCE\n"
    for folder in ("encoder", "model"):
        (tmp_path / folder).mkdir()
    promoted = stage("promote", "--decision", "gate/decision.json", "--day", "2026-11-02", "--encoder", "encoder",
                     "--model", "model", "--out", "promote")
    assert promoted.returncode == 0, promoted.stderr
    promotion = json.loads((tmp_path / "promote" / "promotion.json").read_text())
    assert not promotion["promoted"] and promotion["reason"].startswith("gate: not enough evidence")
    assert not (tmp_path / "registry" / "champion.json").exists()


def test_one_item_per_request_skips_the_ranking_checks_and_the_click_checks_decide():
    """The Open Bandit sample logs one item per request: no ranking to judge, so no score_spread or
    baseline check (a default gate would otherwise refuse every such log), and the click AUC decides."""
    ranking = {"primary": {"min_value": 0.0, "max_regression": 0.01}, "baseline_margin": 0.005,
               "baselines": {"with_truth": ["random"], "without_truth": ["random"]},
               "baseline_slices": ["surface=search"], "min_score_spread": 1e-4}
    single = {**held_out(60, 5), "primary_metric": "ndcg_at_10_ips",
              "ranking": {"score_spread": {"std": None, "requests": 0}, "slices": {}}}
    single["candidate"].update(score_spread=None, ndcg_at_10_ips=1.0)
    decision = decide(single, CHECKS, min_clicks=30, ranking=ranking)
    assert decision["decision"] == "BLESSED", decision["reason"]
    skipped = {s["metric"]: s["reason"] for s in decision["skipped"]}
    assert "no ranking to judge" in skipped["score_spread"] and "no ranking to judge" in skipped["ndcg_at_10_ips"]
    single["candidate"]["auc_click"] = 0.5
    assert decide(single, CHECKS, min_clicks=30, ranking=ranking)["decision"] == "NOT_BLESSED"
    # With lists, the same missing spread still refuses: a constant score cannot be ruled out.
    listed = {**single, "ranking": {"score_spread": {"std": None, "requests": 40}, "slices": {}}}
    listed["candidate"] = {**single["candidate"], "auc_click": 0.7}
    assert decide(listed, CHECKS, min_clicks=30, ranking=ranking)["deciding_check"]["kind"] == "score_spread"


def test_a_purchase_auc_on_a_few_purchases_is_skipped_not_failed():
    few = held_out(60, 12, auc_purchase=0.5)  # below min_value 0.55, on 12 purchases
    decision = decide(few, CHECKS, min_clicks=30, min_purchases=30)
    assert decision["decision"] == "BLESSED", decision["reason"]
    assert decision["skipped"][0]["reason"].startswith("auc_purchase rests on 12 held-out purchases, fewer than "
                                                       "gate.min_purchases=30")
    assert "not enough evidence for auc_purchase" in decision["reason"]
    judged = decide(few, CHECKS, min_clicks=30, min_purchases=10)
    assert judged["decision"] == "NOT_BLESSED" and "gate.checks.auc_purchase.min_value" in judged["reason"]
