"""Estimators register here by name; a new estimator is one module with one decorated function.

Interface: `score(ctx: Context) -> DataFrame(event_id, score, evidence_*)`, higher = more
trustworthy/useful, one row per index in `ctx.rows_to_score()`. The `evidence_<name>` columns hold the
per-row quantities the score comes from (an out-of-fold loss, a gradient norm, a posterior), so a
reviewer can see why a row weighs what it does; `low_reason` and `high_reason` (or a `reason` function
of the evidence) label the rows whose weight ends up low or high. An estimator registered `shardable=True` scores a row the same whatever
other rows are scored: it fits its models on the whole log and scores only `ctx.rows`, so a log can be
scored in shards (`--shard i/n`) and the shards combined.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.model.dataset import DayData

COST_CLASSES = ("forward-only", "per-sample-gradients", "retraining")
EVIDENCE_PREFIX = "evidence_"


@dataclass
class Context:
    """What an estimator gets: the log (rows, features, time split), params, a seed and a device."""

    data: DayData
    params: dict
    seed: int
    device: str
    rows: np.ndarray | None = None  # indices into data.impressions to score (one shard); None: every row

    def rows_to_score(self) -> np.ndarray:
        return np.arange(len(self.data.impressions)) if self.rows is None else np.asarray(self.rows)

    def output(self, scores: np.ndarray, evidence: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """The output frame from one score (and evidence value) per row to score, in the order of
        rows_to_score()."""
        rows = self.rows_to_score()
        frame = pd.DataFrame({"event_id": self.data.impressions["event_id"].iloc[rows].reset_index(drop=True),
                              "score": np.asarray(scores)})
        for name, values in (evidence or {}).items():
            frame[EVIDENCE_PREFIX + name] = np.asarray(values, dtype=np.float64)
        return frame

    def select(self, scores: np.ndarray, evidence: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """The output frame for the rows to score, from a score (and evidence) for every row of the log."""
        rows = self.rows_to_score()
        return self.output(np.asarray(scores)[rows],
                           {name: np.asarray(values)[rows] for name, values in (evidence or {}).items()})


@dataclass(frozen=True)
class Estimator:
    name: str
    cost_class: str
    score: Callable[[Context], pd.DataFrame]
    shardable: bool = False
    low_reason: str = "low score"     # why a low-weight row weighs little, in the estimator's terms
    high_reason: str = "high score"
    # The reason of each low-weight row from its evidence columns, where one label does not fit them all.
    reason: Callable[[pd.DataFrame], np.ndarray] | None = None


_REGISTRY: dict[str, Estimator] = {}


def register(name: str, cost_class: str, shardable: bool = False, low_reason: str = "low score",
             high_reason: str = "high score", reason: Callable[[pd.DataFrame], np.ndarray] | None = None):
    if cost_class not in COST_CLASSES:
        raise ValueError(f"estimator {name!r}: cost class {cost_class!r} is not one of {COST_CLASSES}")

    def decorate(fn: Callable[[Context], pd.DataFrame]):
        _REGISTRY[name] = Estimator(name, cost_class, fn, shardable, low_reason, high_reason, reason)
        return fn
    return decorate


def available() -> dict[str, Estimator]:
    # Every public module of the estimators package registers its own estimator when imported.
    package = importlib.import_module("pipeline.importance.estimators")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"pipeline.importance.estimators.{module.name}")
    return dict(_REGISTRY)


def get(name: str) -> Estimator:
    estimators = available()
    if name not in estimators:
        raise KeyError(f"unknown importance estimator {name!r}; known: {', '.join(sorted(estimators))}")
    return estimators[name]
