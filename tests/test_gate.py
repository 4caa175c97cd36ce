"""The gate's decisions on hand-made metrics: value checks, absolute and relative change checks, every
slice, small and undefined slices skipped, the first run, and clear errors for rules it cannot apply."""
import json
import subprocess
import sys

import pytest

from pipeline.release.gate import decide

CHECKS = {
    "auc_click": {"direction": "higher", "min_value": 0.55, "max_regression": 0.005},
    "logloss_click": {"direction": "lower", "max_value": 0.7, "max_regression": 0.005},
}
GOOD = {"auc_click": 0.70, "logloss_click": 0.40}
SLICE_CHECKS = {
    "auc_click": {"direction": "higher", "min_value": 0.5, "max_regression": 0.03},
    "logloss_click": {"direction": "lower", "max_relative_regression": 0.05},
}


def metrics(candidate, champion=None, slices=None):
    out = {"day": "2026-11-01", "candidate": candidate, "champion": champion,
           "champion_id": None if champion is None else "2026-10-31-abc"}
    if slices is not None:
        out["slices"] = slices
    return out


def a_slice(rows, candidate, champion=None):
    return {"rows": rows, "requests": rows // 10, "candidate": candidate, "champion": champion}


def failed(decision):
    return [(c["slice"], c["metric"], c["kind"]) for c in decision["checks"] if not c["passed"]]


def test_first_run_is_blessed_without_baseline_and_says_so():
    decision = decide(metrics(GOOD), CHECKS)
    assert decision["decision"] == "BLESSED" and decision["without_baseline"]
    assert "without a baseline" in decision["reason"]
    assert {c["kind"] for c in decision["checks"]} == {"value"}


def test_first_run_below_value_threshold_is_not_blessed():
    decision = decide(metrics({"auc_click": 0.52, "logloss_click": 0.40}), CHECKS)
    assert decision["decision"] == "NOT_BLESSED"
    assert "auc_click=0.52 must be >= 0.55" in decision["reason"]


def test_regression_beyond_the_allowed_change_is_rejected():
    decision = decide(metrics({"auc_click": 0.69, "logloss_click": 0.40}, GOOD), CHECKS)
    assert decision["decision"] == "NOT_BLESSED"
    assert failed(decision) == [("overall", "auc_click", "change")]
    assert decision["failed"] == [{"metric": "auc_click", "slice": "overall", "kind": "change"}]
    assert "2026-10-31-abc" == decision["baseline"]


def test_small_move_within_tolerance_and_improvement_pass():
    within = decide(metrics({"auc_click": 0.697, "logloss_click": 0.404}, GOOD), CHECKS)
    better = decide(metrics({"auc_click": 0.75, "logloss_click": 0.30}, GOOD), CHECKS)
    assert within["blessed"] and better["blessed"]
    assert "champion 2026-10-31-abc" in better["reason"]


def test_lower_is_better_metric_rejects_a_rise():
    decision = decide(metrics({"auc_click": 0.70, "logloss_click": 0.41}, GOOD), CHECKS)
    assert not decision["blessed"] and "logloss_click" in decision["reason"]


def test_relative_change_is_a_fraction_of_the_champions_value():
    rules = {"logloss_click": {"direction": "lower", "max_relative_regression": 0.05},
             "auc_click": {"direction": "higher", "max_relative_regression": 0.01}}
    champion = {"logloss_click": 0.40, "auc_click": 0.70}
    # 0.40 * 1.05 = 0.42 and 0.70 * 0.99 = 0.693 are the limits.
    inside = decide(metrics({"logloss_click": 0.419, "auc_click": 0.694}, champion), rules)
    outside = decide(metrics({"logloss_click": 0.421, "auc_click": 0.692}, champion), rules)
    assert inside["blessed"]
    assert sorted(failed(outside)) == [("overall", "auc_click", "relative_change"),
                                       ("overall", "logloss_click", "relative_change")]
    check = next(c for c in outside["checks"] if c["metric"] == "logloss_click")
    assert check["threshold"] == pytest.approx(0.42) and check["champion"] == 0.40
    assert "5.0% of the champion's value up" in outside["reason"]


def test_absolute_and_relative_change_both_apply():
    rules = {"auc_click": {"direction": "higher", "max_regression": 0.05, "max_relative_regression": 0.01}}
    decision = decide(metrics({"auc_click": 0.68}, {"auc_click": 0.70}), rules)
    assert failed(decision) == [("overall", "auc_click", "relative_change")]


def test_every_slice_is_checked_and_a_failing_slice_is_named():
    slices = {"surface=search": a_slice(900, {"auc_click": 0.60, "logloss_click": 0.40},
                                       {"auc_click": 0.66, "logloss_click": 0.40}),
              "surface=recommend": a_slice(800, {"auc_click": 0.71, "logloss_click": 0.45},
                                           {"auc_click": 0.70, "logloss_click": 0.40})}
    decision = decide(metrics(GOOD, GOOD, slices), CHECKS, SLICE_CHECKS, min_slice_rows=500)
    assert not decision["blessed"]
    assert sorted(failed(decision)) == [("surface=recommend", "logloss_click", "relative_change"),
                                        ("surface=search", "auc_click", "change")]
    assert "[surface=search] auc_click=0.6" in decision["reason"]
    assert "[surface=recommend] logloss_click=0.45" in decision["reason"]
    for check in decision["checks"]:
        assert set(check) >= {"metric", "slice", "kind", "candidate", "champion", "threshold", "passed"}
    # The slices follow slice_checks (no value check on logloss there), the whole slice follows checks.
    kinds = {(c["slice"], c["metric"]): set() for c in decision["checks"]}
    for c in decision["checks"]:
        kinds[(c["slice"], c["metric"])].add(c["kind"])
    assert kinds[("surface=search", "logloss_click")] == {"relative_change"}
    assert kinds[("overall", "logloss_click")] == {"value", "change"}


def test_small_slice_is_skipped_not_failed():
    slices = {"category=Pets": a_slice(120, {"auc_click": 0.40, "logloss_click": 0.90},
                                       {"auc_click": 0.70, "logloss_click": 0.40})}
    decision = decide(metrics(GOOD, GOOD, slices), CHECKS, SLICE_CHECKS, min_slice_rows=500)
    assert decision["blessed"]
    assert decision["skipped"] == [{"slice": "category=Pets", "metric": None, "rows": 120,
                                    "reason": "120 rows, fewer than gate.min_slice_rows=500"}]
    assert not [c for c in decision["checks"] if c["slice"] == "category=Pets"]
    assert "1 slices skipped (fewer than 500 rows)" in decision["reason"]
    # The same slice with enough rows fails.
    assert not decide(metrics(GOOD, GOOD, slices), CHECKS, SLICE_CHECKS, min_slice_rows=100)["blessed"]


def test_metric_undefined_on_a_slice_or_the_whole_slice_is_skipped_with_the_reason():
    no_purchase = {"auc_click": 0.7, "logloss_click": 0.4, "auc_purchase": None}
    rules = {**SLICE_CHECKS, "auc_purchase": {"direction": "higher", "min_value": 0.5}}
    slices = {"category=Office": a_slice(600, no_purchase, no_purchase)}
    overall = {**GOOD, "auc_purchase": 0.7}
    decision = decide(metrics(overall, overall, slices), CHECKS, rules, min_slice_rows=500)
    assert decision["blessed"]
    assert [(s["slice"], s["metric"]) for s in decision["skipped"]] == [("category=Office", "auc_purchase")]
    # On the whole slice: not enough evidence, with the reason why it is undefined.
    no_clicks = {**metrics({**GOOD, "auc_click": None}, {**GOOD, "auc_click": None}), "rows": 800, "clicks": 0,
                 "purchases": 0}
    decision = decide(no_clicks, CHECKS)
    assert decision["blessed"]
    assert decision["skipped"] == [{"slice": "overall", "metric": "auc_click", "rows": 800,
                                    "reason": "auc_click is undefined: no click among the 800 held-out rows, and "
                                              "AUC needs rows with and without one: not enough evidence, skipped"}]
    assert "not enough evidence for auc_click" in decision["reason"]
    # Undefined for the candidate only (the champion has a value on the same rows): a failure.
    assert not decide(metrics({**GOOD, "auc_click": None}, GOOD), CHECKS)["blessed"]


def test_undefined_for_the_candidate_only_fails_on_a_slice():
    slices = {"surface=search": a_slice(600, {"auc_click": None, "logloss_click": 0.4}, GOOD)}
    decision = decide(metrics(GOOD, GOOD, slices), CHECKS, SLICE_CHECKS, min_slice_rows=500)
    assert ("surface=search", "auc_click", "change") in failed(decision)


def test_first_run_checks_slices_by_value_only():
    slices = {"surface=search": a_slice(900, {"auc_click": 0.45, "logloss_click": 0.4})}
    decision = decide(metrics(GOOD, None, slices), CHECKS, SLICE_CHECKS, min_slice_rows=500)
    assert failed(decision) == [("surface=search", "auc_click", "value")]
    assert {c["kind"] for c in decision["checks"]} == {"value"}


def test_slices_use_the_overall_checks_when_slice_checks_are_not_given():
    slices = {"surface=search": a_slice(900, {"auc_click": 0.69, "logloss_click": 0.40}, GOOD)}
    decision = decide(metrics(GOOD, GOOD, slices), CHECKS, None, min_slice_rows=500)
    assert failed(decision) == [("surface=search", "auc_click", "change")]


def test_unknown_metric_in_params_is_an_error():
    with pytest.raises(KeyError, match="no_such_metric"):
        decide(metrics(GOOD), {"no_such_metric": {"direction": "higher", "min_value": 0}})
    with pytest.raises(KeyError, match=r"gate.slice_checks.ndcg_at_5: evaluate wrote no such metric"):
        decide(metrics(GOOD), CHECKS, {"ndcg_at_5": {"direction": "higher", "min_value": 0}})


@pytest.mark.parametrize("rule, message", [
    ({"direction": "up", "min_value": 0.5}, r"auc_click.direction must be 'higher' or 'lower', got 'up'"),
    ({"min_value": 0.5}, r"auc_click.direction must be 'higher' or 'lower', got None"),
    ({"direction": "lower", "max_value": 0.5}, r"direction is 'lower', but higher auc_click is better"),
    ({"direction": "higher", "max_value": 0.9}, r"auc_click.max_value does not apply to direction 'higher'"),
    ({"direction": "higher", "max_regresion": 0.1}, r"unknown key max_regresion"),
    ({"direction": "higher", "max_regression": -0.1}, r"max_regression must be >= 0"),
    ({"direction": "higher", "min_value": "high"}, r"min_value must be a number"),
    ({"direction": "higher"}, r"no threshold"),
])
def test_rule_the_gate_cannot_apply_is_a_clear_error(rule, message):
    with pytest.raises(ValueError, match=message):
        decide(metrics(GOOD), {"auc_click": rule})


def cli(tmp_path, params):
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    return subprocess.run([sys.executable, "-m", "pipeline", "gate", "--metrics", "metrics.json",
                           "--params", "params.yaml", "--out", "gate"], cwd=tmp_path, capture_output=True,
                          text=True)


def test_cli_writes_decision_and_marker(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics({"auc_click": 0.5, "logloss_click": 0.4})))
    result = cli(tmp_path, {"gate": {"checks": CHECKS, "min_slice_rows": 500}})
    assert result.returncode == 0, result.stderr
    decision = json.loads((tmp_path / "gate" / "decision.json").read_text())
    assert decision["decision"] == "NOT_BLESSED"
    assert (tmp_path / "gate" / "blessing").read_text() == "NOT_BLESSED\n"


def test_cli_with_a_bad_rule_names_it_and_writes_nothing(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(GOOD)))
    bad = {"logloss_click": {"direction": "higher", "min_value": 0.5}}
    result = cli(tmp_path, {"gate": {"checks": bad, "min_slice_rows": 500}})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gate: gate.checks.logloss_click.direction is 'higher', but lower logloss_click is better"]
    assert not (tmp_path / "gate").exists()
    missing = cli(tmp_path, {"gate": {"checks": CHECKS}})
    assert missing.returncode == 2 and "gate.min_slice_rows is missing" in missing.stderr
