"""Confident learning (Northcutt et al. 2021) on cross-fitted click probabilities.

Each training row's click probability comes from a ranker that never saw it (k-fold cross-fitting
by request, as oof_loss); holdout rows get the mean of the fold models. A row labelled j whose
predicted probability of the other class clears that class's threshold (the mean predicted
probability of the class over rows labelled with it) is a label issue. The score is the row's
self-confidence normalised by its class threshold, with every issue below every other row.

`find_label_issues` and `label_quality` work on plain arrays, for any number of classes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.importance.estimators._crossfit import out_of_fold_click_probabilities
from pipeline.importance.estimators.training_dynamics import positive_int, training_labels
from pipeline.importance.registry import Context, register


def check_inputs(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2 or pred_probs.shape[0] != len(labels):
        raise ValueError(f"pred_probs must be (rows, classes) with one row per label, got {pred_probs.shape} "
                         f"for {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= pred_probs.shape[1]
                        or not np.array_equal(labels, labels.astype(np.int64))):
        raise ValueError(f"labels must be integers in [0, {pred_probs.shape[1]})")
    if not np.isfinite(pred_probs).all():
        raise ValueError("pred_probs has non-finite entries")
    return labels.astype(np.int64), pred_probs


def class_thresholds(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """t_j = mean predicted probability of class j over the rows labelled j."""
    labels, pred_probs = check_inputs(labels, pred_probs)
    k = pred_probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"every class needs at least one labelled row; missing: {missing}")
    sums = np.bincount(labels, weights=pred_probs[np.arange(len(labels)), labels], minlength=k)
    return sums / counts


def confident_classes(pred_probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The class each row confidently belongs to (-1 when no class clears its threshold): among the
    classes at or above their threshold, the most probable one."""
    above = pred_probs >= thresholds[None, :]
    best = np.where(above, pred_probs, -np.inf).argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def confident_joint(labels: np.ndarray, pred_probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """C[i, j] = rows labelled i that confidently belong to class j (uncalibrated counts)."""
    labels, pred_probs = check_inputs(labels, pred_probs)
    thresholds = class_thresholds(labels, pred_probs) if thresholds is None else np.asarray(thresholds)
    k = pred_probs.shape[1]
    confident = confident_classes(pred_probs, thresholds)
    keep = confident >= 0
    return np.bincount(labels[keep] * k + confident[keep], minlength=k * k).reshape(k, k)


def find_label_issues(labels, pred_probs, thresholds=None) -> np.ndarray:
    """Bool mask: rows labelled j that confidently belong to another class (the off-diagonal of the
    confident joint). `thresholds` default to the per-class thresholds of these rows."""
    labels, pred_probs = check_inputs(labels, pred_probs)
    thresholds = class_thresholds(labels, pred_probs) if thresholds is None else np.asarray(thresholds)
    confident = confident_classes(pred_probs, thresholds)
    return (confident >= 0) & (confident != labels)


def label_quality(labels, pred_probs, thresholds=None) -> np.ndarray:
    """Self-confidence over its class threshold: p(given label) / t_label; 1 is a typical row of its class."""
    labels, pred_probs = check_inputs(labels, pred_probs)
    thresholds = class_thresholds(labels, pred_probs) if thresholds is None else np.asarray(thresholds)
    return pred_probs[np.arange(len(labels)), labels] / np.maximum(thresholds[labels], 1e-12)


def issue_ranked_quality(labels, pred_probs, thresholds=None, issues=None) -> np.ndarray:
    """Label quality, with every flagged issue (`issues`, found here when not given) pushed below every
    unflagged row."""
    quality = label_quality(labels, pred_probs, thresholds)
    issues = find_label_issues(labels, pred_probs, thresholds) if issues is None else issues
    # Quality is >= 0, so subtracting more than its maximum puts issues below every clean row.
    return np.where(issues, quality - (1.0 + quality.max(initial=0.0)), quality)


@register("confident_learning", cost_class="retraining", shardable=True,
          low_reason="likely label issue", high_reason="label agrees with out-of-fold model")
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["confident_learning"]
    k = int(cfg["folds"])
    epochs = positive_int(cfg, "epochs", "confident_learning")
    batch_size = positive_int(cfg, "batch_size", "confident_learning")
    day = ctx.data
    train_clicks = training_labels(day, "confident_learning")
    train = day.train_index

    # A calibrated start: the thresholds compare probabilities.
    p_click = out_of_fold_click_probabilities(ctx, k, "importance.estimators.confident_learning.folds",
                                              "confident_learning", epochs, batch_size)

    labels = day.x.click.numpy().astype(np.int64)
    pred_probs = np.column_stack([1.0 - p_click, p_click])
    # Thresholds from the out-of-fold training rows only; holdout rows are judged against them.
    thresholds = class_thresholds(train_clicks.astype(np.int64), pred_probs[train])
    issues = find_label_issues(labels, pred_probs, thresholds)
    return ctx.select(issue_ranked_quality(labels, pred_probs, thresholds, issues),
                      {"p_click_out_of_fold": p_click, "label_issue": issues.astype(np.float64)})
