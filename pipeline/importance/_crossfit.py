"""k-fold cross-fitting by request, shared by the estimators that score rows with models that never
saw them (oof_loss, el2n, confident_learning)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from pipeline.importance.registry import Context


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
