"""gate stage: bless or reject the candidate, TFX-style, with every check and the reason written down."""
from __future__ import annotations

import argparse

from pipeline.atomic import atomic_dir, read_json, write_json_atomic
from pipeline.params import load_params

BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, help="metrics.json written by evaluate")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: decision.json and blessing (BLESSED or NOT_BLESSED)")


def check_metric(name: str, rule: dict, value, baseline) -> list[dict]:
    """The value check, and the change check when there is a champion to compare with."""
    higher = rule["direction"] == "higher"
    if rule["direction"] not in ("higher", "lower"):
        raise ValueError(f"gate.checks.{name}.direction must be 'higher' or 'lower', got {rule['direction']!r}")
    checks = []
    bound_key = "min_value" if higher else "max_value"
    if bound_key in rule:
        bound = rule[bound_key]
        passed = value is not None and (value >= bound if higher else value <= bound)
        checks.append({"metric": name, "kind": "value", "candidate": value, "threshold": bound,
                       "passed": passed,
                       "detail": f"{name}={value} must be {'>=' if higher else '<='} {bound}"})
    if baseline is not None and "max_regression" in rule:
        allowed = rule["max_regression"]
        limit = baseline - allowed if higher else baseline + allowed
        passed = value is not None and (value >= limit if higher else value <= limit)
        checks.append({"metric": name, "kind": "change", "candidate": value, "champion": baseline,
                       "threshold": round(limit, 6), "passed": passed,
                       "detail": f"{name}={value} vs champion {baseline}: may move at most {allowed} "
                                 f"{'down' if higher else 'up'}"})
    return checks


def decide(metrics: dict, checks_cfg: dict) -> dict:
    candidate, champion = metrics["candidate"], metrics.get("champion")
    checks = []
    for name, rule in checks_cfg.items():
        if name not in candidate:
            raise KeyError(f"gate.checks.{name}: evaluate wrote no such metric (has {sorted(candidate)})")
        checks.extend(check_metric(name, rule, candidate[name], None if champion is None else champion.get(name)))
    failed = [c for c in checks if not c["passed"]]
    if failed:
        reason = "failed: " + "; ".join(c["detail"] for c in failed)
    elif champion is None:
        reason = "no champion yet: blessed without a baseline (value thresholds passed)"
    else:
        reason = f"all {len(checks)} checks passed against champion {metrics.get('champion_id')}"
    return {"decision": NOT_BLESSED if failed else BLESSED, "blessed": not failed,
            "baseline": metrics.get("champion_id"), "without_baseline": champion is None,
            "day": metrics.get("day"), "reason": reason, "checks": checks}


def run(metrics_file, out_dir, params: dict) -> dict:
    decision = decide(read_json(metrics_file), params["gate"]["checks"])
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "decision.json", decision)
        # TFX-style marker with a fixed name, so DVC can track it: BLESSED or NOT_BLESSED.
        (tmp / "blessing").write_text(decision["decision"] + "\n")
    print(f"gate: {decision['decision']}: {decision['reason']}")
    return decision


def main(args: argparse.Namespace) -> int:
    run(args.metrics, args.out, load_params(args.params))
    return 0
