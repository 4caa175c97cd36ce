"""k-fold cross-fitting by request, shared by the estimators that score rows with models that never
saw them (oof_loss, el2n, confident_learning, noise_mixture)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
import torch

from pipeline.importance.registry import Context
from pipeline.model import ranker


def request_folds(request_ids: pd.Series, k: int, seed: int) -> np.ndarray:
    """Fold number per row; a request's rows share a fold so a list never straddles train and test."""
    unique = np.sort(request_ids.unique())
    fold_of = dict(zip(unique, np.random.default_rng(seed).permutation(len(unique)) % k))
    return request_ids.map(fold_of).to_numpy()


# fold_values(fold, fit_rows, score_rows, holdout_rows) -> (values for score_rows, values for holdout_rows)
FoldValues = Callable[[int, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def cross_fit(ctx: Context, k: int, folds_knob: str, name: str, fold_values: FoldValues) -> np.ndarray:
    """One value per row: training rows from the fold model that did not see them, held-out rows the
    mean over all fold models (every one of them is out-of-sample there)."""
    if k < 2:
        raise ValueError(f"{folds_knob} must be at least 2, got {k}")
    data = ctx.data
    train = data.train_index
    requests = data.impressions["request_id"].iloc[train]
    if requests.nunique() < k:
        raise ValueError(f"{name}: the training slice has {requests.nunique()} requests, "
                         f"fewer than {folds_knob}={k}")
    folds = request_folds(requests, k, ctx.seed)
    values = np.zeros(len(data.impressions), dtype=np.float64)
    holdout_sum = np.zeros(len(data.holdout_index), dtype=np.float64)
    for fold in range(k):
        score_values, holdout_values = fold_values(fold, train[folds != fold], train[folds == fold],
                                                   data.holdout_index)
        values[train[folds == fold]] = score_values
        holdout_sum += holdout_values
    if len(data.holdout_index):
        values[data.holdout_index] = holdout_sum / k
    return values


def out_of_fold_click_probabilities(ctx: Context, k: int, folds_knob: str, name: str, epochs: int,
                                    batch_size: int = 8192, calibrated_start: bool = True) -> np.ndarray:
    """P(click) at the logged position for every row, from fold rankers that never saw it (cross_fit).
    With `calibrated_start`, each fold model's click intercept starts at its rows' click rate, so an
    undertrained intercept does not shift every row's probability the same way."""
    day = ctx.data

    def fold_values(fold, fit_rows, score_rows, holdout_rows):
        fit_x = day.x.subset(fit_rows)
        model = ranker.new_model(day.x.text_dim, ctx.params["ranker"], ctx.seed + fold, fit_x)
        rate = float(fit_x.click.mean())
        if calibrated_start and 0 < rate < 1:
            with torch.no_grad():
                model.click_head.bias.fill_(math.log(rate / (1 - rate)))
        ranker.fit(model, fit_x, None, ctx.params["train"], ctx.seed + fold, ctx.device, epochs=epochs)
        return tuple(ranker.predict(model, day.x.subset(rows), ctx.device, with_position=True,
                                    batch_size=batch_size)["p_click"] for rows in (score_rows, holdout_rows))

    return cross_fit(ctx, k, folds_knob, name, fold_values)
