"""The gate's decisions on hand-made metrics: value checks, change checks, the first run."""
import json
import subprocess
import sys

import pytest

from pipeline.gate import decide

CHECKS = {
    "auc_click": {"direction": "higher", "min_value": 0.55, "max_regression": 0.005},
    "logloss_click": {"direction": "lower", "max_value": 0.7, "max_regression": 0.005},
}
GOOD = {"auc_click": 0.70, "logloss_click": 0.40}


def metrics(candidate, champion=None):
    return {"day": "2026-11-01", "candidate": candidate, "champion": champion,
            "champion_id": None if champion is None else "2026-10-31-abc"}


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
    failed = [c for c in decision["checks"] if not c["passed"]]
    assert [(c["metric"], c["kind"]) for c in failed] == [("auc_click", "change")]
    assert "2026-10-31-abc" == decision["baseline"]


def test_small_move_within_tolerance_and_improvement_pass():
    within = decide(metrics({"auc_click": 0.697, "logloss_click": 0.404}, GOOD), CHECKS)
    better = decide(metrics({"auc_click": 0.75, "logloss_click": 0.30}, GOOD), CHECKS)
    assert within["blessed"] and better["blessed"]
    assert "champion 2026-10-31-abc" in better["reason"]


def test_lower_is_better_metric_rejects_a_rise():
    decision = decide(metrics({"auc_click": 0.70, "logloss_click": 0.41}, GOOD), CHECKS)
    assert not decision["blessed"] and "logloss_click" in decision["reason"]


def test_undefined_metric_fails_its_check():
    decision = decide(metrics({"auc_click": None, "logloss_click": 0.40}), CHECKS)
    assert not decision["blessed"]


def test_unknown_metric_in_params_is_an_error():
    with pytest.raises(KeyError, match="no_such_metric"):
        decide(metrics(GOOD), {"no_such_metric": {"direction": "higher", "min_value": 0}})


def test_cli_writes_decision_and_marker(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics({"auc_click": 0.5, "logloss_click": 0.4})))
    (tmp_path / "params.yaml").write_text(json.dumps({"gate": {"checks": CHECKS}}))
    subprocess.run([sys.executable, "-m", "pipeline", "gate", "--metrics", "metrics.json",
                    "--params", "params.yaml", "--out", "gate"], cwd=tmp_path, check=True)
    decision = json.loads((tmp_path / "gate" / "decision.json").read_text())
    assert decision["decision"] == "NOT_BLESSED"
    assert (tmp_path / "gate" / "blessing").read_text() == "NOT_BLESSED\n"
