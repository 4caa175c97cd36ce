"""evaluate stage: candidate and champion scored on the same held-out time slice of the day, overall
and per slice (pipeline/model/slices.py), beside trivial baselines (pipeline/model/baselines.py).

Ranking is measured without the logged position's help: on a simulated log (one with a truth file)
by NDCG@k against the true relevance (`ndcg_at_K_true`), on any log by NDCG@k of clicks weighted by
the inverse examination propensity (`ndcg_at_K_ips`); the first is the primary ranking metric when
there is truth, else the second (metrics.json: primary_metric). Candidate - champion and candidate -
baseline differences carry paired bootstrap intervals over requests (metrics.json: bootstrap), and
`score_spread` says how much the candidate's ranking score varies within a request.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.atomic import read_json
from pipeline.model import metrics as m


class Scorer:
    """The metrics of one model's predictions on the held-out rows or any subset of them.

    Ranks within each request are worked out once per model (`ranks`), so a slice of items is scored
    at the rank the model gave it in the whole list; ties break by a seeded random permutation
    (metrics.ranks_within), never by the logged order. Clicks are the relevant rows of MRR and recall;
    NDCG's gain counts a click once and a purchase again (`ndcg_at_K`). Two position-free NDCGs sit
    beside it: `ndcg_at_K_true`, gain = the simulator's true relevance (only on a log that has it), and
    `ndcg_at_K_ips`, gain = click / examination propensity (metrics.ips_gains).
    """

    def __init__(self, impressions: pd.DataFrame, cfg: dict, relevance: np.ndarray | None = None,
                 ips_gains: np.ndarray | None = None, seed: int = m.TIE_SEED):
        self.groups = pd.factorize(impressions["request_id"])[0]
        self.n_groups = int(self.groups.max() + 1) if len(self.groups) else 0
        self.clicked = impressions["clicked"].to_numpy()
        self.purchased = impressions["purchased"].to_numpy()
        self.gains = 2.0 ** (self.clicked + self.purchased) - 1.0
        self.ndcg_k, self.recall_k, self.bins = cfg["ndcg_k"], cfg["recall_k"], cfg["calibration_bins"]
        self.seed = seed
        # Rows without a true relevance drop out of the true NDCG with their whole request.
        self.relevance = None if relevance is None else np.nan_to_num(relevance, nan=0.0)
        self.truth_requests = None
        if relevance is not None:
            missing = np.bincount(self.groups, weights=np.isnan(relevance), minlength=self.n_groups) > 0
            self.truth_requests = ~missing
        self.ips_gains = ips_gains

    @property
    def true_name(self) -> str:
        return f"ndcg_at_{self.ndcg_k}_true"

    @property
    def ips_name(self) -> str:
        return f"ndcg_at_{self.ndcg_k}_ips"

    @property
    def primary(self) -> str:
        """The ranking metric the gate judges by: true-relevance NDCG when the log has truth, else IPS NDCG."""
        return self.true_name if self.relevance is not None else self.ips_name

    def ranks(self, scores: np.ndarray) -> np.ndarray:
        return m.ranks_within(self.groups, scores, self.seed)

    def per_request(self, ranks: np.ndarray) -> dict[str, np.ndarray]:
        """Each ranking metric per request of the held-out rows (NaN where undefined)."""
        g, n, relevant = self.groups, self.n_groups, self.clicked > 0
        out = {f"ndcg_at_{self.ndcg_k}": m.ndcg_per_group(g, self.gains, ranks, self.ndcg_k, n),
               "mrr": m.mrr_per_group(g, relevant, ranks, n),
               f"recall_at_{self.recall_k}": m.recall_per_group(g, relevant, ranks, self.recall_k, n)}
        if self.relevance is not None:
            true = m.ndcg_per_group(g, self.relevance, ranks, self.ndcg_k, n)
            out[self.true_name] = np.where(self.truth_requests, true, np.nan)
        if self.ips_gains is not None:
            out[self.ips_name] = m.ndcg_per_group(g, self.ips_gains, ranks, self.ndcg_k, n)
        return out

    def ranking(self, ranks: np.ndarray, rows: np.ndarray | None = None) -> dict:
        rows = slice(None) if rows is None else rows
        groups, clicked, ranks = self.groups[rows], self.clicked[rows], ranks[rows]
        values = {f"ndcg_at_{self.ndcg_k}": m.ndcg_at_k_from_ranks(groups, self.gains[rows], ranks, self.ndcg_k),
                  "mrr": m.mrr_from_ranks(groups, clicked > 0, ranks),
                  f"recall_at_{self.recall_k}": m.recall_at_k_from_ranks(groups, clicked > 0, ranks, self.recall_k)}
        if self.relevance is not None:
            keep = self.truth_requests[groups]
            values[self.true_name] = m.ndcg_at_k_from_ranks(groups[keep], self.relevance[rows][keep], ranks[keep],
                                                            self.ndcg_k)
        if self.ips_gains is not None:
            values[self.ips_name] = m.ndcg_at_k_from_ranks(groups, self.ips_gains[rows], ranks, self.ndcg_k)
        return values

    def row_metrics(self, predictions: dict, rows=None, weights: np.ndarray | None = None) -> dict:
        """The click and purchase prediction metrics; `weights` a count per row (a bootstrap resample)."""
        pick = slice(None) if rows is None else rows
        clicked, p_click = self.clicked[pick], predictions["p_click"][pick]
        return {"auc_click": m.auc(clicked, p_click, weights),
                "logloss_click": m.logloss(clicked, p_click, weights),
                "ece_click": m.ece(clicked, p_click, self.bins, weights),
                "auc_purchase": m.auc(self.purchased[pick], predictions["p_purchase"][pick], weights)}

    def score(self, predictions: dict, ranks: np.ndarray, rows: np.ndarray | None = None) -> dict:
        """Every metric; None where it is undefined on these rows (one class, no click), never 0.5."""
        return rounded({**self.row_metrics(predictions, rows), **self.ranking(ranks, rows)})


def rounded(values: dict) -> dict:
    return {name: (round(v, 6) if v is not None else None) for name, v in values.items()}


def check_ranking_config(cfg: dict) -> None:
    """evaluate.baselines, evaluate.ips and evaluate.bootstrap, checked before any model is loaded."""
    def number(where, value, low, high=None, low_open=False):
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
        bad = bad or (value <= low if low_open else value < low) or (high is not None and value >= high)
        if bad:
            span = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
            raise ValueError(f"evaluate.{where} must be a number {span}, got {value!r}")

    for section, keys in (("baselines", ("popularity_prior",)), ("ips", ("propensity", "eta", "min_propensity",
                                                                          "fit_min_rows", "fit_max_position")),
                          ("bootstrap", ("resamples", "level"))):
        if not isinstance(cfg.get(section), dict) or any(key not in cfg[section] for key in keys):
            raise ValueError(f"evaluate.{section} must be a mapping with {', '.join(keys)}, got {cfg.get(section)!r}")
    number("baselines.popularity_prior", cfg["baselines"]["popularity_prior"], 0)
    ips = cfg["ips"]
    if ips["propensity"] not in ("examination", "logged"):
        raise ValueError(f"evaluate.ips.propensity must be 'examination' or 'logged', got {ips['propensity']!r}")
    if ips["eta"] is not None:
        number("ips.eta", ips["eta"], 0)
    number("ips.min_propensity", ips["min_propensity"], 0, 1.0000001, low_open=True)
    for key in ("fit_min_rows", "fit_max_position"):
        if isinstance(ips[key], bool) or not isinstance(ips[key], int) or ips[key] < 1:
            raise ValueError(f"evaluate.ips.{key} must be a whole number >= 1, got {ips[key]!r}")
    resamples = cfg["bootstrap"]["resamples"]
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise ValueError(f"evaluate.bootstrap.resamples must be a whole number >= 0 (0: no intervals), "
                         f"got {resamples!r}")
    number("bootstrap.level", cfg["bootstrap"]["level"], 0, 1, low_open=True)


def ips_setup(impressions: pd.DataFrame, train: pd.DataFrame, cfg: dict) -> tuple[np.ndarray, dict]:
    """IPS gains of the held-out rows and how their propensities were made.

    The propensity is the examination probability 1 / position ** eta, eta from evaluate.ips.eta or,
    when null, fitted on the day's training rows (metrics.examination_eta). With propensity: logged,
    the log's own `propensity` column is used where it is valid; the data contract defines that
    column as the logging policy's probability of placing the item at that position, which is not
    the chance a user examines the position, so `examination` is the default."""
    ips = cfg["ips"]
    if ips["eta"] is None:
        fit = m.examination_eta(train["position"].to_numpy(), train["clicked"].to_numpy(),
                                ips["fit_min_rows"], ips["fit_max_position"])
        info = {"eta_source": "fitted on the training rows (log CTR vs log position)", **fit}
    else:
        info = {"eta_source": "params", "eta": float(ips["eta"])}
    logged = None
    if ips["propensity"] == "logged" and "propensity" in impressions:
        logged = impressions["propensity"].to_numpy(dtype=np.float64, na_value=np.nan)
        info["logged_rows"] = int((np.isfinite(logged) & (logged > 0) & (logged <= 1)).sum())
    info.update(propensity=ips["propensity"], min_propensity=ips["min_propensity"])
    return m.ips_gains(impressions["clicked"].to_numpy(), impressions["position"].to_numpy(), info["eta"],
                       ips["min_propensity"], logged), info


RANKING_SLICES = ("overall", "surface=search", "surface=recommend")


def ranking_slices(impressions: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row masks of the slices the ranking comparison is reported on (each a set of whole requests)."""
    surface = impressions["surface"].to_numpy()
    masks = {"overall": np.ones(len(impressions), dtype=bool),
             "surface=search": surface == "search", "surface=recommend": surface == "recommend"}
    return {name: mask for name, mask in masks.items() if mask.any()}


def baseline_scores(impressions: pd.DataFrame, train: pd.DataFrame, dense: np.ndarray, dense_names,
                    cfg: dict, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{baseline: (score per held-out row, rows it applies to)} (pipeline/model/baselines.py)."""
    from pipeline.model import baselines as b

    everywhere = np.ones(len(impressions), dtype=bool)
    search = impressions["surface"].to_numpy() == "search"  # a recommendation has no query to match
    return {"random": (b.random_scores(len(impressions), seed), everywhere),
            "logging_order": (b.logging_scores(impressions["position"].to_numpy()), everywhere),
            "popularity": (b.popularity_scores(train, impressions["item_id"], cfg["baselines"]["popularity_prior"]),
                           everywhere),
            "encoder_cosine": (b.cosine_scores(dense, dense_names), search),
            "lexical_overlap": (b.feature_scores(dense, dense_names, b.OVERLAP_FEATURE), search)}


def ranking_comparison(scorer: Scorer, impressions: pd.DataFrame, models: dict, baselines: dict,
                       cfg: dict, seed: int) -> tuple[dict, dict]:
    """(ranking, bootstrap) sections of metrics.json.

    ranking: the primary ranking metric's name, and per slice (overall, each surface) the ranking
    metrics of the candidate, the champion and every baseline that applies there, plus the best
    baseline per metric. bootstrap: paired intervals over requests (the same resampled requests for
    every model) of candidate - champion (every metric overall, the ranking ones per surface too) and
    candidate - each baseline (the ranking metrics and auc_click), each {diff, lower, upper}."""
    boot = cfg["bootstrap"]
    level, resamples = float(boot["level"]), int(boot["resamples"])
    counts = m.bootstrap_counts(scorer.n_groups, resamples, seed)
    ranking_names = [scorer.true_name, scorer.ips_name] if scorer.relevance is not None else [scorer.ips_name]
    masks = ranking_slices(impressions)
    slice_requests = {name: np.bincount(scorer.groups[mask], minlength=scorer.n_groups) > 0
                      for name, mask in masks.items()}
    per_request = {name: scorer.per_request(ranks) for name, (_, ranks) in models.items() if ranks is not None}
    base_ranks = {name: scorer.ranks(scores) for name, (scores, _) in baselines.items()}
    per_request.update({name: scorer.per_request(ranks) for name, ranks in base_ranks.items()})

    def applies(name, slice_name):
        if name not in baselines:
            return True
        # A baseline applies to a slice when it scores every row of it (encoder_cosine: search only).
        return bool(baselines[name][1][masks[slice_name]].all())

    def groups_in(slice_name, values):
        return np.where(slice_requests[slice_name], values, np.nan)

    ranking = {"primary": scorer.primary, "metrics": ranking_names, "slices": {}, "best_baseline": {}}
    for slice_name, mask in masks.items():
        rows = np.flatnonzero(mask)
        entry = {"rows": int(len(rows)), "requests": int(slice_requests[slice_name].sum())}
        for name in list(per_request):
            entry[name] = (rounded({metric: (lambda v: None if np.isnan(v).all() else float(np.nanmean(v)))(
                                    groups_in(slice_name, per_request[name][metric])) for metric in ranking_names})
                           if applies(name, slice_name) else None)
        for name, (scores, scope) in baselines.items():
            if entry[name] is not None:
                entry[name]["auc_click"] = rounded({"v": m.auc(scorer.clicked[rows], scores[rows])})["v"]
        entry["candidate"]["auc_click"] = rounded({"v": m.auc(scorer.clicked[rows],
                                                              models["candidate"][0]["p_click"][rows])})["v"]
        ranking["slices"][slice_name] = entry
        best = {}
        for metric in ranking_names + ["auc_click"]:
            valued = [(entry[b][metric], b) for b in baselines if entry[b] is not None
                      and entry[b].get(metric) is not None]
            if valued:
                best[metric] = max(valued)[1]
        ranking["best_baseline"][slice_name] = best

    bootstrap = {"resamples": resamples, "level": level, "unit": "request", "seed": seed,
                 "candidate_minus_champion": {}, "candidate_minus_baseline": {}, "candidate_minus_best_baseline": {}}
    if resamples == 0:
        return ranking, bootstrap
    cand = per_request["candidate"]
    candidate_predictions = models["candidate"][0]
    for slice_name in masks:
        if "champion" in per_request:
            entry = {metric: m.paired_group_interval(groups_in(slice_name, cand[metric]),
                                                     groups_in(slice_name, per_request["champion"][metric]),
                                                     counts, level)
                     for metric in (cand if slice_name == "overall" else ranking_names)}
            if slice_name == "overall":
                champion_predictions_ = models["champion"][0]
                for metric in ("auc_click", "logloss_click", "ece_click", "auc_purchase"):
                    entry[metric] = m.paired_row_interval(
                        lambda w, metric=metric: _difference(scorer.row_metrics(candidate_predictions, None, w)[metric],
                                                             scorer.row_metrics(champion_predictions_, None, w)[metric]),
                        scorer.groups, counts, level)
            bootstrap["candidate_minus_champion"][slice_name] = entry
        for name, (scores, _) in baselines.items():
            if not applies(name, slice_name):
                continue
            entry = {metric: m.paired_group_interval(groups_in(slice_name, cand[metric]),
                                                     groups_in(slice_name, per_request[name][metric]), counts, level)
                     for metric in ranking_names}
            if slice_name == "overall":
                entry["auc_click"] = m.paired_row_interval(
                    lambda w, scores=scores: _difference(m.auc(scorer.clicked, candidate_predictions["p_click"], w),
                                                         m.auc(scorer.clicked, scores, w)),
                    scorer.groups, counts, level)
            bootstrap["candidate_minus_baseline"].setdefault(name, {})[slice_name] = entry
        best = {}
        for metric, name in ranking["best_baseline"].get(slice_name, {}).items():
            found = bootstrap["candidate_minus_baseline"].get(name, {}).get(slice_name, {}).get(metric)
            if found is not None:
                best[metric] = {"baseline": name, **found}
        bootstrap["candidate_minus_best_baseline"][slice_name] = best
    return ranking, bootstrap


def _difference(a, b):
    return None if a is None or b is None else a - b


def scored_slices(scorer: Scorer, masks: dict, models: dict) -> dict:
    """{slice: {rows, requests, candidate, champion}}; `models` maps a name to (predictions, ranks) or None."""
    out = {}
    for name, mask in masks.items():
        rows = np.flatnonzero(mask)
        out[name] = {"rows": int(len(rows)), "requests": int(len(np.unique(scorer.groups[rows]))),
                     "clicks": int(scorer.clicked[rows].sum()), "purchases": int(scorer.purchased[rows].sum())}
        for model, scored in models.items():
            out[name][model] = None if scored is None else scorer.score(*scored, rows)
    return out


def check_config(cfg: dict) -> None:
    """Fail before any model is loaded when a knob cannot be used as written."""
    for key, minimum in (("ndcg_k", 1), ("recall_k", 1), ("calibration_bins", 1), ("curve_points", 2)):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"evaluate.{key} must be a whole number >= {minimum}, got {value!r}")
    if not isinstance(cfg.get("slices"), dict):
        raise ValueError("evaluate.slices must be a mapping with by, head_query_min_requests and "
                         "new_item_history_days")


def window_days(window_file) -> list[str] | None:
    """The earlier days a window manifest (pipeline.ops.repro writes run/window.json) lists, oldest first."""
    if window_file is None:
        return None
    manifest = read_json(window_file)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("previous"), list):
        raise ValueError(f"{window_file}: expected a window manifest with a 'previous' list of days")
    return sorted(entry["day"] for entry in manifest["previous"])
