"""benchmark command: which importance estimator, turned into weights, gives the best retrained ranker
on this log for its cost (BENCHMARK_PROTOCOL.md).

The log's last requests are the test slice and stay clean; noise is injected into the rest. Every
estimator scores the noisy training rows; its weights retrain the ranker, which is scored on the test
slice beside the same ranker trained unweighted and one trained on the clean rows. Uniform weights
and random scores run beside the estimators as baselines. Writes benchmark.json, report.html and
selection.json (the winner by the rule of params' benchmark section) to --out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.params import load_params, stage_seed

BASELINES = ("uniform", "random")
TEST_METRICS = ("auc_click", "logloss_click", "ndcg_at_10")
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


class Bench:
    """The noisy training rows, the clean ones and the test slice, and how a ranker is trained on them
    and scored."""

    def __init__(self, data_dir, days, embeddings_dir, spec: dict, params: dict):
        from pipeline import features, noise
        from pipeline.compute import setup
        from pipeline.dataset import days_in, read_log, text_embeddings, uses_extra_features
        from pipeline.evaluate import Scorer

        self.params, self.cfg = params, params["benchmark"]
        self.device = setup(params, stage_seed(params, "benchmark"))
        impressions, self.catalog = read_log(data_dir, days, uses_extra_features(params))
        self.days = list(days or days_in(data_dir))
        table = text_embeddings(impressions, self.catalog, embeddings_dir, params)
        test = features.holdout_mask(impressions, params["split"]["holdout_fraction"])
        if not test.any() or test.all():
            raise ValueError(f"{data_dir}: split.holdout_fraction leaves no test slice or no training rows")
        clean = impressions[~test].reset_index(drop=True)
        self.noisy, self.kind = noise.inject(clean, spec, stage_seed(params, "benchmark:noise"))
        # The estimators' own time split of the noisy rows (DayData's holdout).
        self.noisy_holdout = features.holdout_mask(self.noisy, params["split"]["holdout_fraction"])
        # Rows the log itself marks as noise (the simulator's own bots and stray clicks) are neither
        # injected noise nor clean: detection is measured without them.
        self.measured = self.is_noise | ~log_noise(data_dir, self.days, self.noisy["event_id"])
        build = lambda frame: features.build(frame, self.catalog, table, params["ranker"]["max_position"])  # noqa: E731
        self.clean_x, self.noisy_x = build(clean), build(self.noisy)
        self.test = impressions[test].reset_index(drop=True)
        self.test_x = build(self.test)
        self.scorer = Scorer(self.test, params["evaluate"])
        self.rows = {"rows": int(len(impressions)), "train_rows": int(len(clean)), "test_rows": int(len(self.test))}

    @property
    def is_noise(self) -> np.ndarray:
        return self.kind != ""

    def data(self):
        """The noisy training rows as an estimator sees them (with their own time split)."""
        from pipeline.dataset import DayData

        return DayData(self.noisy, self.catalog, self.noisy_x, self.noisy_holdout)

    def train(self, x, weights=None, epochs: int | None = None, run: int = 0):
        from pipeline import ranker, training

        seed = stage_seed(self.params, f"benchmark:train:{run}" if run else "benchmark:train")
        cfg = {**self.params["train"], "max_steps": None, "checkpoint_every_steps": 0,
               "early_stopping": {"patience": 0}}
        model = ranker.new_model(x.text_dim, self.params["ranker"], seed, x, weights=weights)
        training.fit(model, x, weights, cfg, seed, self.device, epochs or int(self.cfg["train_epochs"]),
                     loss_fn=ranker.per_sample_loss)
        return model

    def test_metrics(self, model) -> dict:
        from pipeline import ranker

        predictions = ranker.predict(model, self.test_x, self.device, with_position=True)
        values = self.scorer.score(predictions, self.scorer.ranks(predictions["score"]))
        return {name: values[name] for name in TEST_METRICS}

    def retrained(self, x, weights=None) -> tuple[dict, list[float]]:
        """(test metrics of the ranker trained on x, averaged over benchmark.train_seeds seeds; the
        primary metric of each seed). One seed's test AUC moves by several thousandths, as much as the
        noise costs; run k of every retrain shares its seed, so the seeds pair up across weightings."""
        runs = [self.test_metrics(self.train(x, weights, run=run)) for run in range(int(self.cfg["train_seeds"]))]
        means = {name: round(float(np.mean([r[name] for r in runs])), 6) for name in TEST_METRICS}
        return means, [round(float(r[self.cfg["metric"]]), 6) for r in runs]

    def epoch_seconds(self) -> float:
        started = time.perf_counter()
        self.train(self.noisy_x, epochs=1)
        return time.perf_counter() - started


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
    from pipeline.importance.stage import checked_scores

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


def log_noise(data_dir, days: list[str], event_ids: pd.Series) -> np.ndarray:
    """Per row, whether the log's own truth files (written by the simulator; absent from real logs) mark
    it as noise."""
    from pipeline.contract import DayPaths

    files = [DayPaths(Path(data_dir), day).truth_file for day in days]
    if not all(f.is_file() for f in files):
        return np.zeros(len(event_ids), dtype=bool)
    truth = pd.concat([pd.read_parquet(f, columns=["event_id", "is_noise"]) for f in files])
    marked = set(truth.loc[truth["is_noise"], "event_id"].astype(str))
    return event_ids.astype(str).isin(marked).to_numpy()


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


def retrain_result(bench: Bench, retrained: tuple[dict, list[float]], reference: dict) -> dict:
    """A weighted retrain's test metrics, per-seed primary metric, recovery and its standard error."""
    from pipeline.benchmark_metrics import recovery, recovery_standard_error

    metric, gap = bench.cfg["metric"], float(bench.cfg["min_recovery_gap"])
    test, runs = retrained
    unweighted, clean = reference["unweighted"], reference["clean"]
    return {"test": test, "test_runs": runs,
            "recovery": recovery(test[metric], unweighted["test"][metric], clean["test"][metric], gap),
            "recovery_se": recovery_standard_error(runs, unweighted["test_runs"], clean["test_runs"], gap)}


def best_transform(bench: Bench, scores: np.ndarray, reference: dict) -> tuple[str, dict, dict]:
    """(name, retrain_result, recovery per transform) of the benchmark.transforms candidate whose
    weights retrain the best ranker on the primary metric."""
    metric = bench.cfg["metric"]
    tested = {name: retrain_result(bench, bench.retrained(bench.noisy_x, weights_of(bench, scores, overrides)),
                                   reference)
              for name, overrides in bench.cfg["transforms"].items()}
    lower_is_better = metric.startswith("logloss")
    best = (min if lower_is_better else max)(tested, key=lambda name: tested[name]["test"][metric])
    return best, tested[best], {name: result["recovery"] for name, result in tested.items()}


def measure(bench: Bench, name: str, reference: dict, epoch_seconds: float) -> dict:
    from pipeline.benchmark_metrics import auroc_by_kind, detection

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
            **retrain, "removal": None if uniform else removal_curve(bench, scores, bench.cfg["metric"]),
            "error": None}


def check_transforms(transforms) -> None:
    from pipeline.selection import TRANSFORM_KEYS

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
    from pipeline import benchmark_report, noise
    from pipeline.benchmark_metrics import select
    from pipeline.selection import transform_of

    cfg = params["benchmark"]
    check_transforms(cfg.get("transforms"))
    spec = noise.parse_spec(noise_text if noise_text is not None else cfg["noise"])
    names = estimator_names(estimators_text if estimators_text is not None else cfg["estimators"])
    bench = Bench(data_dir, days, embeddings_dir, spec, params)
    epoch_seconds = bench.epoch_seconds()
    # The oracle knows the injected rows and weighs them 0: what weights alone could recover on this log.
    reference = {name: dict(zip(("test", "test_runs"), bench.retrained(x, weights)))
                 for name, x, weights in (("clean", bench.clean_x, None), ("unweighted", bench.noisy_x, None),
                                          ("oracle", bench.noisy_x, (~bench.is_noise).astype(np.float64)))}
    oracle = retrain_result(bench, (reference["oracle"]["test"], reference["oracle"]["test_runs"]), reference)
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
                                        f"AUROC {done['detection']['auroc']}, test {done['test']}, "
                                        f"recovery {done['recovery']}, cost ratio {done['cost_ratio']}"))
    rule = {"max_cost_ratio": float(cfg["max_cost_ratio"]), "tie_tolerance": float(cfg["tie_tolerance"]),
            "beat_baselines": bool(cfg["beat_baselines"])}
    winner, reason = select(results, rule["max_cost_ratio"], rule["tie_tolerance"], rule["beat_baselines"])
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
              "primary_metric": cfg["metric"], "epoch_seconds": round(epoch_seconds, 3),
              "train_seeds": int(cfg["train_seeds"]), "transforms": cfg["transforms"],
              "reference": {name: r["test"] for name, r in reference.items()},
              "reference_runs": {name: r["test_runs"] for name, r in reference.items()},
              "oracle": {"recovery": oracle["recovery"], "recovery_se": oracle["recovery_se"]}, "estimators": results,
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
    from pipeline.contract import ContractError
    from pipeline.days import parse_day

    try:
        days = [parse_day(d) for d in args.day] if args.day else None
        run(args.data, days, args.embeddings, args.noise, args.estimators, Path(args.out), load_params(args.params))
    except (ValueError, ContractError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    return 0
