"""A short reason for every row's weight, beside the evidence columns it comes from.

A row zeroed by a drop rule names the rule (and its params key); a row whose weight ends below
`importance.report.low_weight` gets the estimator's reading of its evidence (a bot's session, a high
out-of-fold loss); one above `importance.report.high_weight` the estimator's reason for a high weight;
the rest are typical."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.importance.registry import EVIDENCE_PREFIX, Estimator
from pipeline.importance.weights import DROPPED_BY

TYPICAL = "typical weight"


def evidence_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(EVIDENCE_PREFIX)]


def row_reasons(table: pd.DataFrame, dropped: np.ndarray, estimator: Estimator, low_weight: float,
                high_weight: float) -> pd.Categorical:
    """One label per row of `table` (weight and evidence columns), from the drop rule that zeroed it
    (`dropped`, indices into DROPPED_BY) or its weight band."""
    weight = table["weight"].to_numpy()
    reason = np.full(len(weight), TYPICAL, dtype=object)
    low = weight < low_weight
    if low.any():
        reason[low] = (estimator.reason(table.loc[low, evidence_columns(table)]) if estimator.reason is not None
                       else estimator.low_reason)
    reason[weight > high_weight] = estimator.high_reason
    dropped = np.asarray(dropped)
    reason[dropped > 0] = np.asarray(DROPPED_BY, dtype=object)[dropped[dropped > 0]]
    return pd.Categorical(reason)
