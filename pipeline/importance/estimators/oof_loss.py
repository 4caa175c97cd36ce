"""Out-of-fold loss: k-fold cross-fitting of the ranker; an impression its peers cannot explain
(high click loss on a model that never saw it) is likely noise, so its score is minus that loss.

The click term alone is used: purchases are rare and always follow a genuine click, so adding the
purchase loss would mark the most valuable clicks as the most suspicious."""
from __future__ import annotations

import pandas as pd

from pipeline.importance.estimators._crossfit import cross_fit
from pipeline.importance.registry import Context, register
from pipeline.model import ranker


@register("oof_loss", cost_class="retraining", shardable=True,
          low_reason="high out-of-fold loss", high_reason="low out-of-fold loss")
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]
    k = int(cfg["folds"])
    day = ctx.data

    def fold_values(fold, fit_rows, score_rows, holdout_rows):
        fit_x = day.x.subset(fit_rows)
        model = ranker.new_model(day.x.text_dim, ctx.params["ranker"], ctx.seed + fold, fit_x)
        ranker.fit(model, fit_x, None, ctx.params["train"], ctx.seed + fold, ctx.device, epochs=int(cfg["epochs"]))
        return (ranker.click_losses(model, day.x.subset(score_rows), ctx.device),
                ranker.click_losses(model, day.x.subset(holdout_rows), ctx.device))

    loss = cross_fit(ctx, k, "importance.folds", "oof_loss", fold_values)
    return ctx.select(-loss, {"out_of_fold_loss": loss})
