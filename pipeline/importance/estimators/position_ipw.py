"""Position debiasing: inverse propensity weights 1 / P(examined at the logged position).

`ipw_factor(ctx)` gives one factor per row that any quality weight can be multiplied by. The
propensity is the log's `propensity` column where it is present and valid (finite, in (0, 1]),
otherwise the examination probability of the click model fitted on the training slice
(click_model.fit_context); `propensity_source` can force either. Factors are clipped to `clip`.
With `clicked_only`, unclicked rows get factor 1: the unbiased click estimator (Joachims et al. 2017)
reweights clicks only, since a skipped item's examination is unknown.

Position debiasing alone says nothing about noise, so the registered estimator is the product of the
click-model quality weight and the IPW factor, in log space:
    score = click_model score + log_factor_weight * log(ipw factor).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.importance.estimators import click_model
from pipeline.importance.registry import Context, register

SOURCES = ("auto", "logged", "pbm")


def ipw_from(logged_propensity, position, examination: np.ndarray, clip: tuple[float, float],
             source: str = "auto", clicked=None) -> np.ndarray:
    """Per-row clip(1 / propensity) on plain arrays.

    `logged_propensity` may hold NaN (unknown); `examination` is indexed by position. With
    `clicked` given, unclicked rows get factor 1.
    """
    if source not in SOURCES:
        raise ValueError(f"position_ipw.propensity_source must be one of {SOURCES}, got {source!r}")
    low, high = (float(v) for v in clip)
    if not 0 < low <= high:
        raise ValueError(f"position_ipw.clip must be [low, high] with 0 < low <= high, got {clip}")
    position = np.asarray(position, dtype=np.int64)
    logged = np.asarray(logged_propensity, dtype=np.float64)
    if len(logged) != len(position):
        raise ValueError(f"position_ipw: {len(logged)} propensities for {len(position)} positions")
    pbm = np.asarray(examination, dtype=np.float64)[position]
    valid = np.isfinite(logged) & (logged > 0) & (logged <= 1)
    if source == "logged":
        if not valid.all():
            raise ValueError(f"position_ipw: propensity_source is 'logged' but {int((~valid).sum())} rows "
                             "have no valid propensity (finite, in (0, 1])")
        propensity = logged
    elif source == "pbm":
        propensity = pbm
    else:
        propensity = np.where(valid, logged, pbm)
    factor = np.clip(1.0 / np.maximum(propensity, 1e-12), low, high)
    if clicked is not None:
        factor = np.where(np.asarray(clicked) > 0, factor, 1.0)
    return factor


def _factor(ctx: Context, model: click_model.PBM, coded: click_model.Coded) -> np.ndarray:
    cfg = ctx.params["importance"]["estimators"]["position_ipw"]
    impressions = ctx.data.impressions
    logged = (pd.to_numeric(impressions["propensity"], errors="coerce").to_numpy(dtype=np.float64)
              if "propensity" in impressions else np.full(len(impressions), np.nan))
    return ipw_from(logged, coded.position, model.examination, tuple(cfg["clip"]), str(cfg["propensity_source"]),
                    coded.click if cfg["clicked_only"] else None)


def ipw_factor(ctx: Context) -> np.ndarray:
    """One inverse-propensity factor per row of ctx.data, in row order."""
    model, coded = click_model.fit_context(ctx)
    return _factor(ctx, model, coded)


@register("position_ipw", cost_class="forward-only", shardable=True,
          low_reason="unlikely under the click model", high_reason="click at a rarely examined position")
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["position_ipw"]
    quality, model, coded = click_model.quality_scores(ctx)
    factor = _factor(ctx, model, coded)
    values = quality + float(cfg["log_factor_weight"]) * np.log(factor)
    return ctx.select(values, {"click_model_log_likelihood": quality, "ips_factor": factor})
