"""gate stage: bless or reject the candidate, TFX-style, with every check and the reason written down.

Each metric named in params gets a value check (min_value for a higher-is-better metric, max_value
for a lower-is-better one) and change checks against the champion: `max_regression` (absolute) and
`max_relative_regression` (a fraction of the champion's value). `gate.checks` apply to the whole
held-out slice, `gate.slice_checks` (default: the same) to every slice evaluate wrote. A slice with
fewer than `gate.min_slice_rows` rows, or a metric undefined on a slice (one class, no click), is
reported as skipped, not failed; on the whole slice an undefined metric fails.
"""
from __future__ import annotations

import argparse
import math
import sys

from pipeline.atomic import atomic_dir, read_json, write_json_atomic
from pipeline.metrics import direction_of
from pipeline.params import load_params

BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
OVERALL = "overall"
DIRECTIONS = ("higher", "lower")
RULE_KEYS = ("direction", "min_value", "max_value", "max_regression", "max_relative_regression")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, help="metrics.json written by evaluate")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: decision.json and blessing (BLESSED or NOT_BLESSED)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_rules(rules: dict, where: str, known) -> None:
    """A clear error for a rule the gate cannot apply as written."""
    if not isinstance(rules, dict) or not rules:
        raise ValueError(f"{where} must map metric names to rules, got {rules!r}")
    for name, rule in rules.items():
        if name not in known:
            raise KeyError(f"{where}.{name}: evaluate wrote no such metric (has {sorted(known)})")
        if not isinstance(rule, dict):
            raise ValueError(f"{where}.{name} must be a mapping with a direction and thresholds, got {rule!r}")
        unknown = sorted(set(rule) - set(RULE_KEYS))
        if unknown:
            raise ValueError(f"{where}.{name}: unknown key {', '.join(unknown)}; allowed: {', '.join(RULE_KEYS)}")
        direction = rule.get("direction")
        if direction not in DIRECTIONS:
            raise ValueError(f"{where}.{name}.direction must be 'higher' or 'lower', got {direction!r}")
        natural = direction_of(name)
        if natural is not None and natural != direction:
            raise ValueError(f"{where}.{name}.direction is {direction!r}, but {natural} {name} is better")
        wrong, right = ("max_value", "min_value") if direction == "higher" else ("min_value", "max_value")
        if wrong in rule:
            raise ValueError(f"{where}.{name}.{wrong} does not apply to direction {direction!r}: use {right}")
        for key in RULE_KEYS[1:]:
            if key in rule and not _is_number(rule[key]):
                raise ValueError(f"{where}.{name}.{key} must be a number, got {rule[key]!r}")
            if key.startswith("max_") and key.endswith("regression") and key in rule and rule[key] < 0:
                raise ValueError(f"{where}.{name}.{key} must be >= 0, got {rule[key]!r}")
        if len(rule) == 1:
            raise ValueError(f"{where}.{name}: no threshold; set {right}, max_regression or max_relative_regression")


def _check(name, slice_name, kind, value, baseline, threshold, passed, text) -> dict:
    where = "" if slice_name == OVERALL else f"[{slice_name}] "
    return {"metric": name, "slice": slice_name, "kind": kind, "candidate": value, "champion": baseline,
            "threshold": round(threshold, 6), "passed": passed, "detail": where + text}


def check_metric(name: str, rule: dict, value, baseline, slice_name: str = OVERALL) -> list[dict]:
    """The value check, and the change checks when there is a champion to compare with."""
    higher = rule["direction"] == "higher"
    at_least = (lambda v, bound: v >= bound) if higher else (lambda v, bound: v <= bound)
    sign, way = (-1, "down") if higher else (1, "up")
    checks = []
    bound_key = "min_value" if higher else "max_value"
    if bound_key in rule:
        bound = rule[bound_key]
        checks.append(_check(name, slice_name, "value", value, baseline, bound,
                             value is not None and at_least(value, bound),
                             f"{name}={value} must be {'>=' if higher else '<='} {bound}"))
    if baseline is None:
        return checks
    if "max_regression" in rule:
        allowed = rule["max_regression"]
        limit = baseline + sign * allowed
        checks.append(_check(name, slice_name, "change", value, baseline, limit,
                             value is not None and at_least(value, limit),
                             f"{name}={value} vs champion {baseline}: may move at most {allowed} {way}"))
    if "max_relative_regression" in rule:
        fraction = rule["max_relative_regression"]
        limit = baseline + sign * fraction * abs(baseline)
        checks.append(_check(name, slice_name, "relative_change", value, baseline, limit,
                             value is not None and at_least(value, limit),
                             f"{name}={value} vs champion {baseline}: may move at most {fraction:.1%} "
                             f"of the champion's value {way} (limit {round(limit, 6)})"))
    return checks


def slice_checks(name: str, scored: dict, rules: dict, min_rows: int) -> tuple[list[dict], list[dict]]:
    """(checks, skipped) of one slice."""
    if scored["rows"] < min_rows:
        return [], [{"slice": name, "metric": None, "rows": scored["rows"],
                     "reason": f"{scored['rows']} rows, fewer than gate.min_slice_rows={min_rows}"}]
    candidate, champion = scored["candidate"], scored.get("champion")
    checks, skipped = [], []
    for metric, rule in rules.items():
        value, baseline = candidate.get(metric), None if champion is None else champion.get(metric)
        if value is None and baseline is None:
            skipped.append({"slice": name, "metric": metric, "rows": scored["rows"],
                            "reason": f"{metric} is undefined on this slice (one class or no click)"})
            continue
        checks.extend(check_metric(metric, rule, value, baseline, name))
    return checks, skipped


def decide(metrics: dict, checks_cfg: dict, slice_cfg: dict | None = None, min_slice_rows: int = 0) -> dict:
    if not isinstance(metrics.get("candidate"), dict):
        raise ValueError("the metrics hold no 'candidate' mapping: not a metrics.json written by evaluate")
    candidate, champion = metrics["candidate"], metrics.get("champion")
    slice_cfg = checks_cfg if slice_cfg is None else slice_cfg
    check_rules(checks_cfg, "gate.checks", candidate)
    if slice_cfg is not checks_cfg:
        check_rules(slice_cfg, "gate.slice_checks", candidate)
    if isinstance(min_slice_rows, bool) or not isinstance(min_slice_rows, int) or min_slice_rows < 0:
        raise ValueError(f"gate.min_slice_rows must be a whole number >= 0, got {min_slice_rows!r}")
    checks, skipped = [], []
    for name, rule in checks_cfg.items():
        checks.extend(check_metric(name, rule, candidate[name], None if champion is None else champion.get(name)))
    for name, scored in sorted((metrics.get("slices") or {}).items()):
        found, passed_over = slice_checks(name, scored, slice_cfg, min_slice_rows)
        checks.extend(found)
        skipped.extend(passed_over)
    failed = [c for c in checks if not c["passed"]]
    small = sorted({s["slice"] for s in skipped if s["metric"] is None})
    if failed:
        reason = f"failed {len(failed)} of {len(checks)} checks: " + "; ".join(c["detail"] for c in failed)
    elif champion is None:
        reason = "no champion yet: blessed without a baseline (value thresholds passed)"
    else:
        reason = f"all {len(checks)} checks passed against champion {metrics.get('champion_id')}"
    if small and not failed:
        reason += f"; {len(small)} slices skipped (fewer than {min_slice_rows} rows)"
    return {"decision": NOT_BLESSED if failed else BLESSED, "blessed": not failed,
            "baseline": metrics.get("champion_id"), "without_baseline": champion is None,
            "day": metrics.get("day"), "reason": reason, "checks": checks, "skipped": skipped,
            "failed": [{k: c[k] for k in ("metric", "slice", "kind")} for c in failed],
            "counts": {"checks": len(checks), "failed": len(failed), "skipped_slices": len(small),
                       "skipped_metrics": len(skipped) - len(small)}}


def run(metrics_file, out_dir, params: dict) -> dict:
    cfg = params.get("gate") or {}
    for key in ("checks", "min_slice_rows"):
        if key not in cfg:
            raise KeyError(f"gate.{key} is missing from params")
    decision = decide(read_json(metrics_file), cfg["checks"], cfg.get("slice_checks"), cfg["min_slice_rows"])
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "decision.json", decision)
        # TFX-style marker with a fixed name, so DVC can track it: BLESSED or NOT_BLESSED.
        (tmp / "blessing").write_text(decision["decision"] + "\n")
    print(f"gate: {decision['decision']}: {decision['reason']}")
    return decision


def main(args: argparse.Namespace) -> int:
    try:
        run(args.metrics, args.out, load_params(args.params))
    except (KeyError, ValueError) as exc:
        # A misconfigured gate decides nothing: one line naming the problem, no decision written.
        print(f"gate: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0
