"""Out-of-fold loss: k-fold cross-fitting of the ranker; an impression its peers cannot explain
(high click loss on a model that never saw it) is likely noise, so its score is minus that loss.

The click term alone is used: purchases are rare and always follow a genuine click, so adding the
purchase loss would mark the most valuable clicks as the most suspicious."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import ranker
from pipeline.importance.registry import Context, register


def request_folds(request_ids: pd.Series, k: int, seed: int) -> np.ndarray:
    """Fold number per row; a request's rows share a fold so a list never straddles train and test."""
    unique = np.sort(request_ids.unique())
    fold_of = dict(zip(unique, np.random.default_rng(seed).permutation(len(unique)) % k))
    return request_ids.map(fold_of).to_numpy()


@register("oof_loss", cost_class="retraining")
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]
    k = int(cfg["folds"])
    if k < 2:
        raise ValueError(f"importance.folds must be at least 2, got {k}")
    day = ctx.data
    train = day.train_index
    folds = request_folds(day.impressions["request_id"].iloc[train], k, ctx.seed)
    loss = np.zeros(len(day.impressions), dtype=np.float64)
    holdout_sum = np.zeros(len(day.holdout_index), dtype=np.float64)
    for fold in range(k):
        fit_rows, score_rows = train[folds != fold], train[folds == fold]
        fit_x = day.x.subset(fit_rows)
        model = ranker.new_model(day.x.query.shape[1], ctx.params["ranker"], ctx.seed + fold, fit_x)
        ranker.fit(model, fit_x, None, ctx.params["train"], ctx.seed + fold,
                   ctx.device, epochs=int(cfg["epochs"]))
        loss[score_rows] = ranker.click_losses(model, day.x.subset(score_rows), ctx.device)
        # The held-out slice is out-of-sample for every fold model: average them.
        holdout_sum += ranker.click_losses(model, day.x.subset(day.holdout_index), ctx.device)
    loss[day.holdout_index] = holdout_sum / k
    return pd.DataFrame({"event_id": day.impressions["event_id"].to_numpy(), "score": -loss})
