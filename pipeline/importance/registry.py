"""Estimators register here by name; a new estimator is one module with one decorated function.

Interface: `score(ctx: Context) -> DataFrame(event_id, score)`, higher = more trustworthy/useful, one row
per index in `ctx.rows_to_score()`. An estimator registered `shardable=True` scores a row the same whatever
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

from pipeline.dataset import DayData

COST_CLASSES = ("forward-only", "per-sample-gradients", "retraining")
# Modules of this package that hold no estimator; every other module is imported to register its own.
NOT_ESTIMATORS = {"registry", "stage", "weights", "sharding"}


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

    def output(self, scores: np.ndarray) -> pd.DataFrame:
        """The output frame from one score per row to score, in the order of rows_to_score()."""
        rows = self.rows_to_score()
        return pd.DataFrame({"event_id": self.data.impressions["event_id"].iloc[rows].reset_index(drop=True),
                             "score": np.asarray(scores)})

    def select(self, scores: np.ndarray) -> pd.DataFrame:
        """The output frame for the rows to score, from a score for every row of the log."""
        return self.output(np.asarray(scores)[self.rows_to_score()])


@dataclass(frozen=True)
class Estimator:
    name: str
    cost_class: str
    score: Callable[[Context], pd.DataFrame]
    shardable: bool = False


_REGISTRY: dict[str, Estimator] = {}


def register(name: str, cost_class: str, shardable: bool = False):
    if cost_class not in COST_CLASSES:
        raise ValueError(f"estimator {name!r}: cost class {cost_class!r} is not one of {COST_CLASSES}")

    def decorate(fn: Callable[[Context], pd.DataFrame]):
        _REGISTRY[name] = Estimator(name, cost_class, fn, shardable)
        return fn
    return decorate


def available() -> dict[str, Estimator]:
    package = importlib.import_module("pipeline.importance")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in NOT_ESTIMATORS and not module.name.startswith("_"):
            importlib.import_module(f"pipeline.importance.{module.name}")
    return dict(_REGISTRY)


def get(name: str) -> Estimator:
    estimators = available()
    if name not in estimators:
        raise KeyError(f"unknown importance estimator {name!r}; known: {', '.join(sorted(estimators))}")
    return estimators[name]
