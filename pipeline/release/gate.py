"""gate stage: bless or reject the candidate, TFX-style, with every check and the reason written down.

Each metric named in params gets a value check (min_value for a higher-is-better metric, max_value
for a lower-is-better one) and change checks against the champion: `max_regression` (absolute) and
`max_relative_regression` (a fraction of the champion's value). `gate.checks` apply to the whole
held-out slice, `gate.slice_checks` (default: the same) to every slice evaluate wrote.

Change checks on the whole slice use evaluate's paired bootstrap interval of candidate - champion
when it wrote one: a regression counts only when the whole interval is worse than the allowed
change (for a higher-is-better metric: its upper bound below -max_regression), so a difference
inside the noise neither blesses nor blocks. Without an interval (slices, an old metrics.json) the
bare difference is judged.

The ranking checks (when params set them; `decide(..., ranking=...)`):
  score_spread  the candidate's ranking score must vary within requests (mean within-request standard
                deviation >= gate.min_score_spread): a constant score ranks nothing and is never blessed
  defined       the primary ranking metric (evaluate's primary_metric: true-relevance NDCG on a
                simulated log, IPS NDCG otherwise) must be defined on the whole held-out slice
  baseline      on the whole slice and each of gate.baseline_slices with enough rows, the candidate's
                primary metric must beat the best trivial baseline evaluate scored there by
                gate.baseline_margin, judged on the bootstrap interval's lower bound (the bare
                difference without one). Which baselines count is gate.baselines.with_truth /
                without_truth: on a log without truth the logging order is left out by default, as
                its IPS NDCG rests on the fitted examination model (eta fitted on position CTR,
                which relevance inflates) rather than on anything known to be true
  primary       value and change checks of gate.primary (a rule without direction: higher is better)
                on the primary metric, the change judged on its bootstrap interval

A slice with fewer than `gate.min_slice_rows` rows, or a metric undefined on a slice (one class, no
click), is reported as skipped, not failed. On the whole slice a metric that the held-out labels
leave undefined (no purchase, no click: no AUC) is skipped as "not enough evidence" with the reason,
except the primary ranking metric, which must be defined. decision.json names the check that
decided (`deciding_check`) and the reason starts with it. On a log whose held-out requests show one
item each there is no ranking: the ranking checks are skipped as not enough evidence. Every threshold's check names its params
key (gate.checks.auc_click.min_value, ...).

With fewer held-out clicks than `gate.min_clicks` the gate does not decide: the decision is
NOT_ENOUGH_EVIDENCE (not blessed, so promote keeps the champion, and not a failure of the run), and
the checks are kept in decision.json for the record. With fewer held-out purchases than
`gate.min_purchases` the purchase AUC is skipped as not enough evidence.
"""
from __future__ import annotations

import math

from pipeline.model.metrics import direction_of

BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
# Too few held-out clicks to judge (gate.min_clicks): neither blessed nor failed, the champion is kept.
NOT_ENOUGH_EVIDENCE = "NOT_ENOUGH_EVIDENCE"
OVERALL = "overall"
DIRECTIONS = ("higher", "lower")
RULE_KEYS = ("direction", "min_value", "max_value", "max_regression", "max_relative_regression")


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


def _check(name, slice_name, kind, value, baseline, threshold, passed, text, **extra) -> dict:
    where = "" if slice_name == OVERALL else f"[{slice_name}] "
    return {"metric": name, "slice": slice_name, "kind": kind, "candidate": value, "champion": baseline,
            "threshold": None if threshold is None else round(threshold, 6), "passed": passed,
            "detail": where + text, **extra}


def _interval_text(interval: dict) -> str:
    return f"difference {interval['diff']} (interval {interval['lower']} .. {interval['upper']})"


def check_metric(name: str, rule: dict, value, baseline, slice_name: str = OVERALL,
                 interval: dict | None = None, level: float | None = None, key: str | None = None) -> list[dict]:
    """The value check, and the change checks when there is a champion to compare with. `interval`:
    evaluate's bootstrap interval of candidate - champion ({diff, lower, upper}); with it a change
    check fails only when the whole interval is beyond the allowed change. `key`: the params path of
    the rule (gate.checks.NAME), named in each check's detail so a failure says which knob to turn."""
    def knob(threshold: str) -> str:
        return f" ({key}.{threshold})" if key else ""
    higher = rule["direction"] == "higher"
    at_least = (lambda v, bound: v >= bound) if higher else (lambda v, bound: v <= bound)
    sign, way = (-1, "down") if higher else (1, "up")
    checks = []
    bound_key = "min_value" if higher else "max_value"
    if bound_key in rule:
        bound = rule[bound_key]
        checks.append(_check(name, slice_name, "value", value, baseline, bound,
                             value is not None and at_least(value, bound),
                             f"{name}={value} must be {'>=' if higher else '<='} {bound}{knob(bound_key)}"))
    if baseline is None:
        return checks
    changes = []
    if "max_regression" in rule:
        allowed = rule["max_regression"]
        changes.append(("change", allowed, f"may move at most {allowed} {way}{knob('max_regression')}"))
    if "max_relative_regression" in rule:
        fraction = rule["max_relative_regression"]
        allowed = fraction * abs(baseline)
        changes.append(("relative_change", allowed, f"may move at most {fraction:.1%} of the champion's value "
                                                     f"{way} (limit {round(baseline + sign * allowed, 6)})"
                                                     f"{knob('max_relative_regression')}"))
    for kind, allowed, text in changes:
        limit = baseline + sign * allowed
        if interval is not None and value is not None:
            # Significantly worse: even the interval's most favourable end is beyond the allowed change.
            best_end = interval["upper"] if higher else -interval["lower"]
            passed = best_end >= -allowed
            share = f"{level:.0%} " if level else ""
            checks.append(_check(name, slice_name, kind, value, baseline, limit, passed,
                                 f"{name}={value} vs champion {baseline}: {text}; {_interval_text(interval)}: "
                                 + (f"the whole {share}interval is worse than that" if not passed else
                                    f"not significantly worse by the {share}interval"), interval=interval))
        else:
            checks.append(_check(name, slice_name, kind, value, baseline, limit,
                                 value is not None and at_least(value, limit),
                                 f"{name}={value} vs champion {baseline}: {text}"))
    return checks


def slice_checks(name: str, scored: dict, rules: dict, min_rows: int,
                 where: str = "gate.slice_checks") -> tuple[list[dict], list[dict]]:
    """(checks, skipped) of one slice; `where`: the params section of its rules."""
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
        checks.extend(check_metric(metric, rule, value, baseline, name, key=f"{where}.{metric}"))
    return checks, skipped


RANKING_KEYS = ("primary", "baseline_margin", "baselines", "baseline_slices", "min_score_spread")
# The order in which a failed check decides: a constant score first, then the ranking against the
# trivial baselines, then the changes against the champion, then the thresholds.
DECIDING_ORDER = ("score_spread", "defined", "baseline", "change", "relative_change", "value")


def check_ranking_rules(ranking: dict) -> None:
    """A clear error for a ranking rule the gate cannot apply as written."""
    missing = [key for key in RANKING_KEYS if key not in ranking]
    if missing:
        raise KeyError(f"gate.{missing[0]} is missing from params")
    for key in ("baseline_margin", "min_score_spread"):
        if not _is_number(ranking[key]) or ranking[key] < 0:
            raise ValueError(f"gate.{key} must be a number >= 0, got {ranking[key]!r}")
    primary = ranking["primary"]
    if not isinstance(primary, dict):
        raise ValueError(f"gate.primary must be a mapping of thresholds, got {primary!r}")
    unknown = sorted(set(primary) - {"min_value", "max_regression", "max_relative_regression"})
    if unknown:
        raise ValueError(f"gate.primary: unknown key {', '.join(unknown)}; allowed: min_value, max_regression, "
                         f"max_relative_regression (higher is better)")
    check_rules({"primary": {"direction": "higher", **primary, "max_regression": primary.get("max_regression", 0)}},
                "gate", {"primary"})
    chosen = ranking["baselines"]
    if not isinstance(chosen, dict) or set(chosen) != {"with_truth", "without_truth"} or \
            not all(isinstance(v, list) and v for v in chosen.values()):
        raise ValueError(f"gate.baselines must map with_truth and without_truth to non-empty lists of "
                         f"baselines, got {chosen!r}")
    if not isinstance(ranking["baseline_slices"], list):
        raise ValueError(f"gate.baseline_slices must be a list of slices, got {ranking['baseline_slices']!r}")


def undefined_reason(name: str, counts: dict) -> str:
    """Why a click or purchase metric has no value on the held-out rows, from their label counts."""
    rows = counts.get("rows")
    label = {"auc_click": "clicks", "auc_purchase": "purchases"}.get(name)
    if label is None or rows is None or counts.get(label) is None:
        return f"{name} is undefined on these rows"
    have = counts[label]
    if have == 0:
        why = f"no {label[:-1]} among the {rows} held-out rows"
    elif have >= rows:
        why = f"every one of the {rows} held-out rows has a {label[:-1]}"
    else:
        return f"{name} is undefined on these rows ({have} {label} among {rows} rows)"
    return f"{name} is undefined: {why}, and AUC needs rows with and without one"


def no_lists(metrics: dict) -> bool:
    """Whether evaluate found no held-out request of two rows or more (score_spread's request count)."""
    spread = ((metrics.get("ranking") or {}).get("score_spread") or {})
    return isinstance(spread, dict) and spread.get("requests") == 0


def ranking_checks(metrics: dict, ranking_cfg: dict, min_slice_rows: int) -> tuple[list[dict], list[dict]]:
    """(checks, skipped) of the score spread, the primary ranking metric and the trivial baselines."""
    checks, skipped = [], []
    candidate, champion = metrics["candidate"], metrics.get("champion")
    if no_lists(metrics):
        # One item per logged request (the Open Bandit sample): nothing is ranked, so the click checks decide.
        return [], [{"slice": OVERALL, "metric": name, "rows": metrics.get("rows"),
                     "reason": f"no held-out request shows two items or more, so there is no ranking to judge "
                               f"({name}): not enough evidence, skipped"}
                    for name in ("score_spread", metrics.get("primary_metric") or "primary_metric")]
    spread = candidate.get("score_spread")
    bound = ranking_cfg["min_score_spread"]
    checks.append(_check("score_spread", OVERALL, "score_spread", spread, None, bound,
                         spread is not None and spread >= bound,
                         f"score_spread={spread}: the ranking score's mean within-request standard deviation "
                         f"must be >= gate.min_score_spread={bound}" + (" (a constant score ranks nothing)" if spread is not None else
                                                  " (evaluate wrote none: a constant score cannot be ruled out)")))
    ranking = metrics.get("ranking")
    primary = metrics.get("primary_metric")
    if not isinstance(ranking, dict) or primary is None:
        checks.append(_check("primary_metric", OVERALL, "defined", None, None, None, False,
                             "evaluate wrote no primary ranking metric: the candidate's ranking cannot be judged "
                             "against the trivial baselines"))
        return checks, skipped
    value = candidate.get(primary)
    if value is None:
        checks.append(_check(primary, OVERALL, "defined", None, None, None, False,
                             f"{primary} (the primary ranking metric) is undefined on the held-out rows "
                             f"({metrics.get('clicks', '?')} clicks among {metrics.get('rows', '?')} rows): "
                             f"the ranking cannot be judged"))
        return checks, skipped
    boot = metrics.get("bootstrap") or {}
    level = boot.get("level")
    truth = bool((ranking.get("truth") or {}).get("available"))
    allowed = ranking_cfg["baselines"]["with_truth" if truth else "without_truth"]
    margin = ranking_cfg["baseline_margin"]
    for slice_name in [OVERALL] + [s for s in ranking_cfg["baseline_slices"] if s != OVERALL]:
        scored = (ranking.get("slices") or {}).get(slice_name)
        if scored is None:
            skipped.append({"slice": slice_name, "metric": primary, "rows": 0,
                            "reason": f"evaluate scored no ranking slice {slice_name}"})
            continue
        if slice_name != OVERALL and scored["rows"] < min_slice_rows:
            skipped.append({"slice": slice_name, "metric": primary, "rows": scored["rows"],
                            "reason": f"{scored['rows']} rows, fewer than gate.min_slice_rows={min_slice_rows}"})
            continue
        mine = (scored.get("candidate") or {}).get(primary)
        valued = [((scored.get(b) or {}).get(primary), b) for b in allowed]
        valued = [(v, b) for v, b in valued if v is not None]
        if mine is None or not valued:
            skipped.append({"slice": slice_name, "metric": primary, "rows": scored["rows"],
                            "reason": (f"{primary} is undefined for the candidate on this slice" if mine is None
                                       else f"no baseline of {allowed} was scored on this slice")})
            continue
        best_value, best = max(valued)
        interval = (((boot.get("candidate_minus_baseline") or {}).get(best) or {}).get(slice_name) or {}).get(primary)
        # The whole slice must beat the best baseline; a surface slice must not be worse than its own
        # best one (on search the encoder's cosine alone ranks well: a ranker may match it there and
        # earn its margin on recommendations).
        whole = slice_name == OVERALL
        if interval is not None:
            passed = interval["lower"] >= margin if whole else interval["upper"] >= 0
            text = (f"{primary}={mine} vs best baseline {best} {best_value}: {_interval_text(interval)}; "
                    + (f"its lower bound must be >= gate.baseline_margin={margin}" if whole else
                       "its upper bound must be >= 0 (not worse than the baseline on this slice)"))
        else:
            passed = mine - best_value >= (margin if whole else 0.0)
            text = (f"{primary}={mine} vs best baseline {best} {best_value}: must be "
                    + (f"higher by >= gate.baseline_margin={margin}" if whole else "at least as high")
                    + " (no bootstrap interval: bare difference)")
        checks.append(_check(primary, slice_name, "baseline", mine, None, best_value + (margin if whole else 0.0),
                             passed, text,
                             baseline_name=best, baseline_value=best_value, interval=interval))
    rule = {"direction": "higher", **ranking_cfg["primary"]}
    if len(rule) > 1:
        interval = ((boot.get("candidate_minus_champion") or {}).get(OVERALL) or {}).get(primary)
        checks.extend(check_metric(primary, rule, value, None if champion is None else champion.get(primary),
                                   OVERALL, interval, level, key="gate.primary"))
    return checks, skipped


def deciding(checks: list[dict]) -> dict | None:
    """The failed check that decides (by DECIDING_ORDER, the whole slice before a slice), or, when
    all passed, the primary metric's baseline check on the whole slice (what a blessing rests on)."""
    def key(check):
        # An absolute and a relative change bound are one tier: the whole slice's decides before a slice's.
        kind = "change" if check["kind"] == "relative_change" else check["kind"]
        tier = DECIDING_ORDER.index(kind) if kind in DECIDING_ORDER else len(DECIDING_ORDER)
        return tier, check["slice"] != OVERALL
    failed = [c for c in checks if not c["passed"]]
    if failed:
        chosen = min(failed, key=key)
    else:
        chosen = next((c for c in checks if c["kind"] == "baseline" and c["slice"] == OVERALL), None)
        if chosen is None:
            return None
    return {k: chosen[k] for k in ("metric", "kind", "slice", "passed", "detail")}


def check_minimum(key: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"gate.{key} must be a whole number >= 0 or null, got {value!r}")


def short_of_evidence(metrics: dict, min_clicks: int | None) -> str | None:
    """Why the held-out rows are too few to decide on (fewer clicks than gate.min_clicks), or None."""
    clicks = metrics.get("clicks")
    if not min_clicks or clicks is None or clicks >= min_clicks:
        return None
    return (f"not enough evidence: {clicks} held-out clicks among {metrics.get('rows', '?')} rows, fewer than "
            f"gate.min_clicks={min_clicks}; neither blessed nor failed, the champion is kept (a longer log, "
            f"a larger split.holdout_fraction or a lower gate.min_clicks gives a decision)")


def too_few_purchases(counts: dict, min_purchases: int | None) -> str | None:
    """Why the purchase AUC is not judged (fewer held-out purchases than gate.min_purchases), or None."""
    have = counts.get("purchases")
    if not min_purchases or have is None or have >= min_purchases:
        return None
    return (f"auc_purchase rests on {have} held-out purchases, fewer than gate.min_purchases={min_purchases}: "
            f"not enough evidence, skipped")


def withheld(decision: dict, why: str) -> dict:
    """The decision replaced by NOT_ENOUGH_EVIDENCE; the checks stay, for the record."""
    return {**decision, "decision": NOT_ENOUGH_EVIDENCE, "blessed": False, "reason": why,
            "deciding_check": {"metric": "clicks", "kind": "evidence", "slice": OVERALL, "passed": False,
                               "detail": why},
            "checks_reason": decision["reason"]}


def decide(metrics: dict, checks_cfg: dict, slice_cfg: dict | None = None, min_slice_rows: int = 0,
           ranking: dict | None = None, min_clicks: int | None = None, min_purchases: int | None = None) -> dict:
    """`ranking`: the gate's ranking rules (RANKING_KEYS of the gate section); None: no ranking checks.
    `min_clicks`: fewer held-out clicks give NOT_ENOUGH_EVIDENCE whatever the checks say.
    `min_purchases`: with fewer held-out purchases the purchase AUC is skipped as not enough evidence."""
    if not isinstance(metrics.get("candidate"), dict):
        raise ValueError("the metrics hold no 'candidate' mapping: not a metrics.json written by evaluate")
    candidate, champion = metrics["candidate"], metrics.get("champion")
    slice_cfg = checks_cfg if slice_cfg is None else slice_cfg
    check_rules(checks_cfg, "gate.checks", candidate)
    if slice_cfg is not checks_cfg:
        check_rules(slice_cfg, "gate.slice_checks", candidate)
    if isinstance(min_slice_rows, bool) or not isinstance(min_slice_rows, int) or min_slice_rows < 0:
        raise ValueError(f"gate.min_slice_rows must be a whole number >= 0, got {min_slice_rows!r}")
    if ranking is not None:
        check_ranking_rules(ranking)
    check_minimum("min_clicks", min_clicks)
    check_minimum("min_purchases", min_purchases)
    checks, skipped = [], []
    if ranking is not None:
        checks, skipped = ranking_checks(metrics, ranking, min_slice_rows)
    primary = metrics.get("primary_metric") if ranking is not None else None
    boot = metrics.get("bootstrap") or {}
    intervals = (boot.get("candidate_minus_champion") or {}).get(OVERALL) or {}
    counts = {k: metrics.get(k) for k in ("rows", "clicks", "purchases")}
    for name, rule in checks_cfg.items():
        baseline = None if champion is None else champion.get(name)
        if candidate[name] is None and baseline is None and name != primary:
            # The held-out labels leave it undefined for every model: no evidence either way.
            skipped.append({"slice": OVERALL, "metric": name, "rows": metrics.get("rows"),
                            "reason": undefined_reason(name, counts) + ": not enough evidence, skipped"})
            continue
        if name == "auc_purchase" and (few := too_few_purchases(counts, min_purchases)):
            skipped.append({"slice": OVERALL, "metric": name, "rows": metrics.get("rows"), "reason": few})
            continue
        checks.extend(check_metric(name, rule, candidate[name], baseline, OVERALL, intervals.get(name),
                                   boot.get("level"), key=f"gate.checks.{name}"))
    for name, scored in sorted((metrics.get("slices") or {}).items()):
        found, passed_over = slice_checks(name, scored, slice_cfg, min_slice_rows,
                                          "gate.checks" if slice_cfg is checks_cfg else "gate.slice_checks")
        checks.extend(found)
        skipped.extend(passed_over)
    failed = [c for c in checks if not c["passed"]]
    small = sorted({s["slice"] for s in skipped if s["metric"] is None})
    decider = deciding(checks)
    if failed:
        first = next(c for c in failed if c["detail"] == decider["detail"])
        rest = [c for c in failed if c is not first]
        reason = (f"decided by the {decider['kind']} check on {decider['metric']} ({decider['slice']}); "
                  f"failed {len(failed)} of {len(checks)} checks: " + "; ".join(c["detail"] for c in [first, *rest]))
    elif champion is None:
        reason = "no champion yet: blessed without a baseline (value thresholds passed)"
    else:
        reason = f"all {len(checks)} checks passed against champion {metrics.get('champion_id')}"
    if decider is not None and not failed:
        reason += f"; deciding check: {decider['kind']} on {decider['metric']} ({decider['slice']}): {decider['detail']}"
    if small and not failed:
        reason += f"; {len(small)} slices skipped (fewer than {min_slice_rows} rows)"
    evidence = [s for s in skipped if s["slice"] == OVERALL and s["metric"] is not None]
    if evidence and not failed:
        reason += "; not enough evidence for " + ", ".join(s["metric"] for s in evidence)
    decision = {"decision": NOT_BLESSED if failed else BLESSED, "blessed": not failed,
            "baseline": metrics.get("champion_id"), "without_baseline": champion is None,
            "day": metrics.get("day"), "reason": reason, "deciding_check": decider,
            "primary_metric": metrics.get("primary_metric"), "checks": checks, "skipped": skipped,
            "failed": [{k: c[k] for k in ("metric", "slice", "kind")} for c in failed],
            "counts": {"checks": len(checks), "failed": len(failed), "skipped_slices": len(small),
                       "skipped_metrics": len(skipped) - len(small)}}
    why = short_of_evidence(metrics, min_clicks)
    return decision if why is None else withheld(decision, why)
