"""benchmark command: which importance estimator, turned into weights, gives the best retrained ranker
on this log for its cost (BENCHMARK_PROTOCOL.md).

The log's last requests are the test slice and stay clean; noise is injected into the rest. Every
estimator scores the noisy training rows; its weights retrain the ranker, which is scored on the test
slice beside the same ranker trained unweighted and one trained on the clean rows. Uniform weights
and random scores run beside the estimators as baselines. Writes benchmark.json, report.html and
selection.json (the winner by the rule of params' benchmark section) to --out.

On a log with the simulator's truth (_truth/dt=DAY), every retrain's position-free ranking score is also
scored by NDCG@k against the true relevance (ndcg_at_K_true), and recovery is measured on it as well
as on auc_click. benchmark.metric names the primary metric (recovery's transform choice, the removal
curves, the selection); a true-relevance metric on a log without truth falls back to
benchmark.fallback_metric, and the output says so.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.importance.benchmark.bench import Bench
from pipeline.params import load_params, stage_seed

BASELINES = ("uniform", "random")
SELECTION_FILE = "selection.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout), as for importance")
    parser.add_argument("--day", action="append", default=None,
                        help="YYYY-MM-DD; repeat for several days (default: every day in --data)")
    parser.add_argument("--embeddings", default=None,
                        help="embeddings folder written by pretrain (default: embed with pretrain.base_model)")
    parser.add_argument("--noise", default=None,
                        help="KIND:RATE,... injected into the training rows, or none (default: benchmark.noise)")
    parser.add_argument("--estimators", default=None,
                        help="all or NAME,NAME,... (default: benchmark.estimators)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: benchmark.json, report.html, selection.json")


def higher_is_better(metric: str) -> bool:
    from pipeline.model.metrics import direction_of

    return direction_of(metric) != "lower"


def estimator_names(text: str) -> list[str]:
    from pipeline.importance import registry

    known = registry.available()
    if text.strip() == "all":
        return sorted(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"--estimators: unknown {unknown or text!r}; known: all, {', '.join(sorted(known))}")
    return names


def scores_of(bench: Bench, name: str) -> tuple[np.ndarray, float, str | None]:
    """(one score per noisy training row, seconds, cost class)."""
    from pipeline.importance import registry
    from pipeline.importance.scores import checked_scores

    if name == "uniform":
        return np.zeros(len(bench.noisy)), 0.0, None
    if name == "random":
        return np.random.default_rng(stage_seed(bench.params, "benchmark:random")).random(len(bench.noisy)), 0.0, None
    estimator = registry.get(name)
    seed = stage_seed(bench.params, f"importance:{name}")
    started = time.perf_counter()
    table = estimator.score(registry.Context(bench.data(), bench.params, seed, bench.device))
    seconds = time.perf_counter() - started
    return checked_scores(bench.noisy["event_id"], table, name)["score"].to_numpy(), seconds, estimator.cost_class


def weights_of(bench: Bench, scores: np.ndarray, overrides: dict | None = None) -> np.ndarray:
    from pipeline.importance.weights import log_weights

    cfg = {**bench.params["importance"], **(overrides or {}), "cluster_representatives": {}}
    return log_weights(bench.noisy, scores, cfg, None, stage_seed(bench.params, "importance:clusters"))


def removal_curve(bench: Bench, scores: np.ndarray, metric: str) -> dict:
    """The primary test metric after dropping the lowest-scored (and, as the control, the highest) share
    of rows. The share is taken within each value of importance.balance_by, as the weights are balanced:
    clicks score lower than non-clicks under most estimators, and dropping across labels would first
    remove nearly every click. One training seed per point: the curves are a diagnostic, the selection
    rests on the weighted retrains."""
    column = bench.params["importance"].get("balance_by")
    groups = pd.factorize(bench.noisy[column])[0] if column else np.zeros(len(scores), dtype=np.int64)
    fractions = [float(f) for f in bench.cfg["removal_fractions"]]
    curve = {"fractions": fractions, "lowest": [], "highest": []}
    for fraction in fractions:
        for side, keep in zip(("lowest", "highest"), kept_after_removal(scores, groups, fraction)):
            curve[side].append(bench.test_metrics(bench.train(bench.noisy_x.subset(np.flatnonzero(keep))))[metric])
    return curve


def kept_after_removal(scores: np.ndarray, groups: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept when the lowest-scored `fraction` of each group is dropped, rows kept when the highest is)."""
    rank = pd.Series(scores).groupby(groups).rank(method="first", pct=True).to_numpy()  # ties by row order
    return rank > fraction, rank <= 1 - fraction


def retrain_result(bench: Bench, retrained: tuple[dict, dict], reference: dict) -> dict:
    """A weighted retrain's test metrics, per-seed recovery metrics, and on each recovery metric its
    recovery and standard error (`recovery`, `recovery_se`: those on the primary metric)."""
    test, runs = retrained
    by_metric = {metric: recovery_on(bench, metric, test, runs, reference) for metric in bench.recovery_metrics}
    return {"test": test, "test_runs": runs, **by_metric[bench.metric], "recovery_by_metric": by_metric}


def recovery_on(bench: Bench, metric: str, test: dict, runs: dict, reference: dict) -> dict:
    from pipeline.importance.benchmark.metrics import recovery, recovery_standard_error

    gap, higher = float(bench.cfg["min_recovery_gap"]), higher_is_better(metric)
    unweighted, clean = reference["unweighted"], reference["clean"]
    if not bench.noise_cost.get(metric, {}).get("recovery_defined", True):
        return {"recovery": None, "recovery_se": None}  # the noise's cost is within its seed-to-seed spread
    return {"recovery": recovery(test[metric], unweighted["test"][metric], clean["test"][metric], gap, higher),
            "recovery_se": recovery_standard_error(runs[metric], unweighted["test_runs"][metric],
                                                   clean["test_runs"][metric], gap, higher)}


def noise_costs(bench: Bench, reference: dict) -> dict:
    """Per recovery metric: the clean and unweighted references, what the noise cost the unweighted ranker
    (positive: the clean one is better) with its standard error over the paired seeds and, when recovery
    is undefined on it, why: the clean ranker is not better by benchmark.min_recovery_gap, or its lead is
    within benchmark.min_cost_se standard errors (a ratio over a cost the seeds cannot tell from 0 is
    noise over noise)."""
    from pipeline.importance.benchmark.metrics import NO_COST, UNCLEAR_COST, cost_standard_error, noise_cost

    gap, min_se = float(bench.cfg["min_recovery_gap"]), float(bench.cfg.get("min_cost_se", 0.0))
    out = {}
    for metric in bench.recovery_metrics:
        clean, unweighted = reference["clean"]["test"][metric], reference["unweighted"]["test"][metric]
        cost = noise_cost(unweighted, clean, higher_is_better(metric))
        se = cost_standard_error(reference["unweighted"]["test_runs"][metric], reference["clean"]["test_runs"][metric])
        note = None
        if cost is None:
            note = "the test rows leave the metric undefined"
        elif cost <= 0 or cost < gap:
            note = f"{NO_COST} (clean {clean:.4f}, unweighted {unweighted:.4f}; benchmark.min_recovery_gap {gap:g})"
        elif se is not None and cost < min_se * se:
            note = (f"{UNCLEAR_COST} (clean - unweighted {cost:.4f} ± {se:.4f} over "
                    f"{len(reference['clean']['test_runs'][metric])} paired seeds, under benchmark.min_cost_se "
                    f"{min_se:g} standard errors)")
        out[metric] = {"clean": clean, "unweighted": unweighted, "cost": None if cost is None else round(cost, 6),
                       "cost_se": None if se is None else round(se, 6), "recovery_defined": note is None,
                       "note": note}
    return out


def best_transform(bench: Bench, scores: np.ndarray, reference: dict) -> tuple[str, dict, dict]:
    """(name, retrain_result, recovery per transform on the primary metric) of the benchmark.transforms
    candidate whose weights retrain the best ranker on the primary metric."""
    metric = bench.metric
    tested = {name: retrain_result(bench, bench.retrained(bench.noisy_x, weights_of(bench, scores, overrides)),
                                   reference)
              for name, overrides in bench.cfg["transforms"].items()}
    sign = 1.0 if higher_is_better(metric) else -1.0
    defined = [name for name in tested if tested[name]["test"][metric] is not None] or list(tested)
    best = max(defined, key=lambda name: sign * (tested[name]["test"][metric] or 0.0))
    return best, tested[best], {name: result["recovery"] for name, result in tested.items()}


def measure(bench: Bench, name: str, reference: dict, epoch_seconds: float) -> dict:
    from pipeline.importance.benchmark.metrics import auroc_by_kind, detection

    scores, seconds, cost_class = scores_of(bench, name)
    measured = bench.measured
    found, curves = detection(scores[measured], bench.is_noise[measured], int(bench.cfg["curve_points"]))
    uniform = name == "uniform"
    if uniform:
        unweighted = reference["unweighted"]
        transform, by_transform = None, None
        retrain = retrain_result(bench, (unweighted["test"], unweighted["test_runs"]), reference)
    else:
        transform, retrain, by_transform = best_transform(bench, scores, reference)
    return {"kind": "baseline" if name in BASELINES else "estimator", "cost_class": cost_class,
            "seconds": round(seconds, 3), "cost_ratio": round(seconds / epoch_seconds, 4),
            "detection": found, "auroc_by_kind": auroc_by_kind(scores[measured], bench.kind[measured]),
            "curves": None if uniform else curves, "transform": transform, "recovery_by_transform": by_transform,
            **retrain, "removal": None if uniform else removal_curve(bench, scores, bench.metric),
            "error": None}


def check_metric(cfg: dict, ndcg_k: int) -> None:
    """benchmark.metric and benchmark.fallback_metric name test metrics (checked before the log is read)."""
    plain = ["auc_click", "logloss_click", f"ndcg_at_{ndcg_k}"]
    if cfg.get("metric") not in [*plain, f"ndcg_at_{ndcg_k}_true"]:
        raise ValueError(f"benchmark.metric: {cfg.get('metric')!r} is not a test metric; known: "
                         f"{', '.join(plain)}, ndcg_at_{ndcg_k}_true (evaluate.ndcg_k {ndcg_k})")
    if cfg.get("fallback_metric", "auc_click") not in plain:
        raise ValueError(f"benchmark.fallback_metric: {cfg.get('fallback_metric')!r} must be a metric every log "
                         f"has: {', '.join(plain)}")


def trivial_rankers(bench: Bench) -> dict:
    """The click AUC and ranking metrics on the test slice of a seeded random score and of the logged
    order: how far the retrains' figures are from ordering by nothing (and from the logging policy,
    which position bias flatters on the click metrics)."""
    from pipeline.model import baselines
    from pipeline.model.evaluation import rounded
    from pipeline.model.metrics import auc

    scorer, out = bench.scorer, {}
    for name, scores in (("random", baselines.random_scores(len(bench.test), stage_seed(bench.params,
                                                                                         "benchmark:random_ranker"))),
                         ("logging_order", baselines.logging_scores(bench.test["position"].to_numpy()))):
        values = {"auc_click": auc(scorer.clicked, scores), **scorer.ranking(scorer.ranks(scores))}
        out[name] = rounded({metric: values.get(metric) for metric in bench.test_metrics_names
                             if metric != "logloss_click"})
    return out


def check_transforms(transforms) -> None:
    from pipeline.importance.selection import TRANSFORM_KEYS

    if not isinstance(transforms, dict) or not transforms:
        raise ValueError("benchmark.transforms: expected at least one NAME: {knob: value} (an empty one is "
                         "importance's own transform)")
    for name, overrides in transforms.items():
        unknown = set(overrides or {}) - set(TRANSFORM_KEYS)
        if not isinstance(overrides, dict) or unknown:
            raise ValueError(f"benchmark.transforms.{name}: unknown knobs {sorted(unknown)}; "
                             f"known: {', '.join(TRANSFORM_KEYS)}")


def run(data_dir, days: list[str] | None, embeddings_dir, noise_text: str | None, estimators_text: str | None,
        out_dir, params: dict) -> dict:
    from pipeline.importance.benchmark import noise
    from pipeline.importance.benchmark import report as benchmark_report
    from pipeline.importance.benchmark.metrics import select
    from pipeline.importance.selection import transform_of

    cfg = params["benchmark"]
    check_transforms(cfg.get("transforms"))
    check_metric(cfg, int(params["evaluate"]["ndcg_k"]))
    spec = noise.parse_spec(noise_text if noise_text is not None else cfg["noise"])
    names = estimator_names(estimators_text if estimators_text is not None else cfg["estimators"])
    bench = Bench(data_dir, days, embeddings_dir, spec, params)
    print(f"benchmark: primary metric {bench.metric}" + (f" ({bench.metric_note})" if bench.metric_note else "")
          + f"; recovery on {', '.join(bench.recovery_metrics)}")
    epoch_seconds = bench.epoch_seconds()
    # The oracle knows the injected rows and weighs them 0: what weights alone could recover on this log.
    reference = {name: dict(zip(("test", "test_runs"), bench.retrained(x, weights)))
                 for name, x, weights in (("clean", bench.clean_x, None), ("unweighted", bench.noisy_x, None),
                                          ("oracle", bench.noisy_x, (~bench.is_noise).astype(np.float64)))}
    costs = bench.noise_cost = noise_costs(bench, reference)
    oracle = retrain_result(bench, (reference["oracle"]["test"], reference["oracle"]["test_runs"]), reference)
    for metric, cost in costs.items():
        print(f"benchmark: {metric}: clean {cost['clean']}, unweighted {cost['unweighted']}, "
              f"oracle {reference['oracle']['test'][metric]}"
              + (f"; recovery undefined: {cost['note']}" if cost["note"]
                 else f"; the noise costs {cost['cost']} ± {cost['cost_se']}"))
    results = {}
    for name in [*names, *BASELINES]:
        try:
            results[name] = measure(bench, name, reference, epoch_seconds)
        except Exception as exc:  # one failing estimator is reported, the others still run
            if name in BASELINES:
                raise
            from pipeline.importance import registry

            results[name] = {"kind": "estimator", "cost_class": registry.get(name).cost_class,
                             "error": f"{type(exc).__name__}: {exc}"}
        done = results[name]
        print(f"benchmark: {name}: " + (done["error"] if done.get("error") else
                                        f"AUROC {done['detection']['auroc']}, test {done['test']}, recovery "
                                        + ", ".join(f"{metric} {r['recovery']} ± {r['recovery_se']}" for metric, r
                                                    in done["recovery_by_metric"].items())
                                        + f", cost ratio {done['cost_ratio']}"))
    rule = {"metric": bench.metric, "max_cost_ratio": float(cfg["max_cost_ratio"]),
            "tie_tolerance": float(cfg["tie_tolerance"]), "beat_baselines": bool(cfg["beat_baselines"])}
    winner, reason = select(results, rule["max_cost_ratio"], rule["tie_tolerance"], rule["beat_baselines"],
                            bench.metric, costs[bench.metric]["note"])
    if bench.metric_note:
        reason += f" ({bench.metric_note})"
    transform = transform_of(params)
    if winner:
        transform.update(cfg["transforms"][results[winner]["transform"]])
        reason += f"; weight transform {results[winner]['transform']}"
    kinds = pd.Series(bench.kind[bench.is_noise]).value_counts()
    result = {"log": {"data": str(data_dir), "days": bench.days, **bench.rows},
              "noise": {"spec": spec, "seed": stage_seed(params, "benchmark:noise"),
                        "noisy_rows": int(bench.is_noise.sum()), "share": round(float(bench.is_noise.mean()), 6),
                        "log_noise_rows_not_measured": int((~bench.measured).sum()),
                        "share_of_measured": round(float(bench.is_noise[bench.measured].mean()), 6),
                        "by_kind": {str(k): int(v) for k, v in kinds.items()}},
              "primary_metric": bench.metric, "primary_metric_note": bench.metric_note, "truth": bench.has_truth,
              "test_metrics": bench.test_metrics_names, "recovery_metrics": bench.recovery_metrics,
              "epoch_seconds": round(epoch_seconds, 3),
              "train_seeds": int(cfg["train_seeds"]), "transforms": cfg["transforms"],
              "reference": {name: r["test"] for name, r in reference.items()},
              "reference_runs": {name: r["test_runs"] for name, r in reference.items()},
              "noise_cost": costs, "trivial_rankers": trivial_rankers(bench),
              "oracle": {"recovery": oracle["recovery"], "recovery_se": oracle["recovery_se"],
                         "recovery_by_metric": oracle["recovery_by_metric"]}, "estimators": results,
              "selection": {"estimator": winner, "transform": transform, "reason": reason, "rule": rule}}
    selection = {"estimator": winner, "transform": transform, "reason": reason,
                 "benchmark": {"data": str(data_dir), "days": bench.days, "noise": spec}}
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "benchmark.json", result)
        write_json_atomic(tmp / SELECTION_FILE, selection)
        benchmark_report.write(tmp, result)
    print(f"benchmark: selection: {reason}")
    return result


def main(args: argparse.Namespace) -> int:
    from pipeline.data.contract import ContractError
    from pipeline.days import parse_day

    try:
        days = [parse_day(d) for d in args.day] if args.day else None
        run(args.data, days, args.embeddings, args.noise, args.estimators, Path(args.out), load_params(args.params))
    except (ValueError, ContractError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    return 0
