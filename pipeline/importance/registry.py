"""Estimators register here by name; a new estimator is one module with one decorated function.

Interface: `score(ctx: Context) -> DataFrame(event_id, score)`, higher = more trustworthy/useful.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from pipeline.dataset import DayData

COST_CLASSES = ("forward-only", "per-sample-gradients", "retraining")
# Modules that hold estimators; importing one registers what it defines.
ESTIMATOR_MODULES = ("pipeline.importance.oof_loss",)


@dataclass
class Context:
    day: DayData
    params: dict
    seed: int
    device: str


@dataclass(frozen=True)
class Estimator:
    name: str
    cost_class: str
    score: Callable[[Context], pd.DataFrame]


_REGISTRY: dict[str, Estimator] = {}


def register(name: str, cost_class: str):
    if cost_class not in COST_CLASSES:
        raise ValueError(f"estimator {name!r}: cost class {cost_class!r} is not one of {COST_CLASSES}")

    def decorate(fn: Callable[[Context], pd.DataFrame]):
        _REGISTRY[name] = Estimator(name, cost_class, fn)
        return fn
    return decorate


def available() -> dict[str, Estimator]:
    for module in ESTIMATOR_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def get(name: str) -> Estimator:
    estimators = available()
    if name not in estimators:
        raise KeyError(f"unknown importance estimator {name!r}; known: {', '.join(sorted(estimators))}")
    return estimators[name]
