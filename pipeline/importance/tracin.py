"""TracIn self-influence: sum over training checkpoints c of lr_c * ||grad loss(z; theta_c)||^2, how much
a row's own gradient steps lower its own loss along the training run. Rows the model has to
memorise (mislabelled or random clicks) have high self-influence, so the score is minus it.

The checkpoints are the ranker's states after the epochs listed in params, from one run on the
training slice; lr_c is train.learning_rate (constant over the run)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.importance.grand import (check_trainable, checkpoint_epochs, fit_checkpoints, gradient_sq_norms,
                                       knobs, last_layer_norms, loss_kind, positive_int)
from pipeline.importance.registry import Context, register


def _tracin(ctx: Context, name: str, last_layer: bool) -> pd.DataFrame:
    cfg = knobs(ctx, name)
    epochs = checkpoint_epochs(cfg, name)
    batch_size = positive_int(cfg, "batch_size", name)
    kind = "click" if last_layer else loss_kind(cfg, name)
    lr = float(ctx.params["train"]["learning_rate"])
    if not lr > 0:
        raise ValueError(f"train.learning_rate must be > 0 for {name}, got {lr}")
    day = ctx.data
    fit_x = day.x.subset(day.train_index)
    check_trainable(fit_x, f"{name}: the training slice")
    influence = np.zeros(len(day.impressions), dtype=np.float64)
    for model in fit_checkpoints(ctx, fit_x, ctx.seed, epochs):
        if last_layer:
            sq = last_layer_norms(model, day.x, ctx.device, batch_size) ** 2
        else:
            sq = gradient_sq_norms(model, day.x, kind, ctx.device, batch_size)
        influence += lr * sq
    return pd.DataFrame({"event_id": day.impressions["event_id"].to_numpy(), "score": -influence})


@register("tracin", cost_class="per-sample-gradients")
def score(ctx: Context) -> pd.DataFrame:
    return _tracin(ctx, "tracin", last_layer=False)


@register("tracin_last_layer", cost_class="per-sample-gradients")
def score_last_layer(ctx: Context) -> pd.DataFrame:
    return _tracin(ctx, "tracin_last_layer", last_layer=True)
