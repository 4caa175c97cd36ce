"""The benchmark's bench: the log with noise injected, the features built once, and the ranker retrained
with any weights and scored on the clean held-out rows (BENCHMARK_PROTOCOL.md).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.params import stage_seed

RECOVERY_METRICS = ("auc_click",)  # recovery on these, on the true-relevance NDCG and on the primary metric


class Bench:
    """The noisy training rows, the clean ones and the test slice, and how a ranker is trained on them
    and scored."""

    def __init__(self, data_dir, days, embeddings_dir, spec: dict, params: dict):
        from pipeline.compute import setup
        from pipeline.importance.benchmark import noise
        from pipeline.model import features
        from pipeline.model.baselines import true_relevance
        from pipeline.model.dataset import build_features, days_in, read_log, text_embeddings, uses_extra_features
        from pipeline.model.evaluation import Scorer

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
        # Each log's rows read the history features from that log's own rows (and the earlier days' on
        # disk, as the train stage's do): the noisy retrains see the noise in the history too.
        build = lambda frame: build_features(frame, self.catalog, table, params,  # noqa: E731
                                             history_of(data_dir, self.days, frame, params))
        self.clean_x, self.noisy_x = build(clean), build(self.noisy)
        self.test = impressions[test].reset_index(drop=True)
        # The test rows are featured within the whole clean log, as evaluate features its held-out rows:
        # their history holds the training rows before them. One set of inputs for every retrain.
        self.test_x = build(impressions).subset(np.flatnonzero(test))
        truth = read_truths(data_dir, self.days)
        relevance = None if truth is None else true_relevance(self.test, truth)
        self.scorer = Scorer(self.test, params["evaluate"], relevance, seed=stage_seed(params, "benchmark:ties"))
        self.has_truth = truth is not None
        k = int(params["evaluate"]["ndcg_k"])
        self.test_metrics_names = ["auc_click", "logloss_click", f"ndcg_at_{k}"] + \
            ([self.scorer.true_name] if self.has_truth else [])
        self.metric, self.metric_note = primary_metric(self.cfg, self.test_metrics_names, self.has_truth,
                                                       self.scorer.true_name)
        self.recovery_metrics = list(dict.fromkeys(
            [self.metric, *([self.scorer.true_name] if self.has_truth else []), *RECOVERY_METRICS]))
        self.noise_cost: dict = {}  # per recovery metric, once the references are trained (noise_costs)
        self.rows = {"rows": int(len(impressions)), "train_rows": int(len(clean)), "test_rows": int(len(self.test)),
                     "test_requests": int(self.scorer.n_groups),
                     "test_rows_without_truth": None if relevance is None else int(np.isnan(relevance).sum())}

    @property
    def is_noise(self) -> np.ndarray:
        return self.kind != ""

    def data(self):
        """The noisy training rows as an estimator sees them (with their own time split)."""
        from pipeline.model.dataset import DayData

        return DayData(self.noisy, self.catalog, self.noisy_x, self.noisy_holdout)

    def train(self, x, weights=None, epochs: int | None = None, run: int = 0):
        from pipeline.model import ranker, training

        seed = stage_seed(self.params, f"benchmark:train:{run}" if run else "benchmark:train")
        cfg = {**self.params["train"], "max_steps": None, "checkpoint_every_steps": 0,
               "early_stopping": {"patience": 0}}
        model = ranker.new_model(x.text_dim, self.params["ranker"], seed, x, weights=weights)
        training.fit(model, x, weights, cfg, seed, self.device, epochs or int(self.cfg["train_epochs"]),
                     loss_fn=ranker.per_sample_loss)
        return model

    def test_metrics(self, model) -> dict:
        from pipeline.model import ranker

        return self.scored(ranker.predict(model, self.test_x, self.device, with_position=True))

    def scored(self, predictions: dict) -> dict:
        """The test metrics of predictions on the test rows: the click metrics read pCTR at the logged
        position; the ranking metrics order each request by the position-free score (ties by a seeded
        permutation), ndcg_at_K_true with the true relevance as the gain."""
        values = self.scorer.score(predictions, self.scorer.ranks(predictions["score"]))
        return {name: values[name] for name in self.test_metrics_names}

    def retrained(self, x, weights=None) -> tuple[dict, dict]:
        """(test metrics of the ranker trained on x, averaged over benchmark.train_seeds seeds; each
        recovery metric per seed). One seed's test AUC moves by several thousandths, as much as the
        noise costs; run k of every retrain shares its seed, so the seeds pair up across weightings."""
        runs = [self.test_metrics(self.train(x, weights, run=run)) for run in range(int(self.cfg["train_seeds"]))]
        means = {name: mean_of([r[name] for r in runs]) for name in self.test_metrics_names}
        return means, {name: [None if r[name] is None else round(float(r[name]), 6) for r in runs]
                       for name in self.recovery_metrics}

    def epoch_seconds(self) -> float:
        started = time.perf_counter()
        self.train(self.noisy_x, epochs=1)
        return time.perf_counter() - started


def history_of(data_dir, days: list[str], frame: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The logged rows `frame`'s history features read: the earlier days' on disk and the frame's own."""
    from pipeline.model.dataset import logged_history

    return logged_history(data_dir, days, frame, params)


def mean_of(values: list) -> float | None:
    """The mean over seeds, None when a seed's value is undefined (a metric the test rows leave undefined)."""
    return None if any(v is None for v in values) or not values else round(float(np.mean(values)), 6)


def read_truths(data_dir, days: list[str]) -> pd.DataFrame | None:
    """The simulator's truth tables of `days` (event_id, relevance), or None unless every day has one."""
    from pipeline.model.baselines import read_truth

    tables = [read_truth(data_dir, day) for day in days]
    if not tables or any(t is None for t in tables):
        return None
    return pd.concat(tables, ignore_index=True).drop_duplicates("event_id")


def primary_metric(cfg: dict, available: list[str], has_truth: bool, true_name: str) -> tuple[str, str | None]:
    """(the metric recovery's transform choice, the removal curves and the selection go by; a note when
    it is not benchmark.metric). A true-relevance metric on a log without truth falls back to
    benchmark.fallback_metric."""
    wanted = str(cfg["metric"])
    if wanted.endswith("_true") and not has_truth:
        fallback = str(cfg.get("fallback_metric") or "auc_click")
        if fallback not in available:
            raise ValueError(f"benchmark.fallback_metric: {fallback!r} is not a test metric; known: "
                             f"{', '.join(available)}")
        return fallback, (f"the log has no true relevance (no _truth/dt=DAY files): recovery and the selection "
                          f"go by {fallback}, not benchmark.metric {wanted}")
    if wanted.endswith("_true") and wanted != true_name:
        raise ValueError(f"benchmark.metric: {wanted!r} does not match evaluate.ndcg_k; known: "
                         f"{', '.join(available)}")
    if wanted not in available:
        raise ValueError(f"benchmark.metric: {wanted!r} is not a test metric; known: {', '.join(available)}")
    return wanted, None


def log_noise(data_dir, days: list[str], event_ids: pd.Series) -> np.ndarray:
    """Per row, whether the log's own truth files (written by the simulator; absent from real logs) mark
    it as noise."""
    from pipeline.data.contract import DayPaths

    files = [DayPaths(Path(data_dir), day).truth_file for day in days]
    if not all(f.is_file() for f in files):
        return np.zeros(len(event_ids), dtype=bool)
    truth = pd.concat([pd.read_parquet(f, columns=["event_id", "is_noise"]) for f in files])
    marked = set(truth.loc[truth["is_noise"], "event_id"].astype(str))
    return event_ids.astype(str).isin(marked).to_numpy()
