"""EL2N: the L2 norm of the error vector (predicted probability minus label) of rankers trained only
a few epochs, for the click and for the click-and-purchase (pCTR x pCVR) targets. Early in training
a model fits the easy, consistent rows; rows still far off are hard or noisy, so the score is minus
the mean norm.

Cross-fitted like oof_loss: the training slice is split into k folds by request and each training
row is scored by the fold model that never saw it; held-out rows by every fold model. The norm is
averaged over the checkpoints (the states after the epochs listed in params)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.importance.estimators._crossfit import cross_fit
from pipeline.importance.estimators.grand import (
    check_trainable,
    checkpoint_epochs,
    fit_checkpoints,
    knobs,
    positive_int,
)
from pipeline.importance.registry import Context, register
from pipeline.model import ranker

TARGETS = ("click", "purchase")
NAME = "el2n"


def error_norms(model: ranker.Ranker, x, targets: list[str], device: str, batch_size: int) -> np.ndarray:
    """||p - y|| per row over the chosen targets, predicted at the logged position."""
    pred = ranker.predict(model, x, device, with_position=True, batch_size=batch_size)
    labels = {"click": x.click.numpy(), "purchase": x.purchase.numpy()}
    probs = {"click": pred["p_click"], "purchase": pred["p_purchase"]}
    sq = sum((probs[t].astype(np.float64) - labels[t]) ** 2 for t in targets)
    return np.sqrt(sq)


def el2n_targets(cfg: dict) -> list[str]:
    targets = cfg.get("targets")
    if not isinstance(targets, list) or not targets or not set(targets) <= set(TARGETS):
        raise ValueError(f"importance.estimators.{NAME}.targets must be a non-empty list drawn from {TARGETS}, "
                         f"got {targets!r}")
    return [t for t in TARGETS if t in targets]


@register(NAME, cost_class="retraining", shardable=True,
          low_reason="large out-of-fold error (EL2N)", high_reason="small out-of-fold error (EL2N)")
def score(ctx: Context) -> pd.DataFrame:
    cfg = knobs(ctx, NAME)
    k = positive_int(cfg, "folds", NAME)
    epochs = checkpoint_epochs(cfg, NAME)
    targets = el2n_targets(cfg)
    batch_size = positive_int(cfg, "batch_size", NAME)
    day = ctx.data

    def fold_values(fold, fit_rows, score_rows, holdout_rows):
        fit_x = day.x.subset(fit_rows)
        check_trainable(fit_x, f"{NAME}: fold {fold}'s training rows (of importance.estimators.{NAME}.folds={k}; "
                               f"fewer folds or a log with more clicks gives each fold both)")
        models = fit_checkpoints(ctx, fit_x, ctx.seed + fold, epochs)
        return tuple(np.mean([error_norms(m, day.x.subset(rows), targets, ctx.device, batch_size) for m in models], 0)
                     for rows in (score_rows, holdout_rows))

    norm = cross_fit(ctx, k, f"importance.estimators.{NAME}.folds", NAME, fold_values)
    return ctx.select(-norm, {"el2n": norm})
