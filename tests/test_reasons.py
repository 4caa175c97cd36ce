"""A reason for every weight: the drop rule that zeroed a row, else the estimator's reading of its
evidence for a low or high weight, else typical; checked row by row against the rules' own masks."""
import numpy as np
import pandas as pd
import pytest

from pipeline.importance.estimators.noise_mixture import low_weight_reason
from pipeline.importance.reasons import TYPICAL, row_reasons
from pipeline.importance.registry import Estimator
from pipeline.importance.weights import DROPPED_BY, explained_transform, transform

BASE = {"temperature": 1.0, "clip": [0.1, 3.0]}
PLAIN = Estimator("plain", "forward-only", lambda ctx: None, low_reason="high loss", high_reason="low loss")


def test_each_zero_weight_names_the_first_rule_that_dropped_it():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=600)
    sessions = rng.integers(0, 60, size=600)
    cfg = {**BASE, "drop_lowest_percent": 10, "drop_sessions_percent": 10}
    weights, dropped = explained_transform(scores, cfg, sessions=sessions)
    np.testing.assert_array_equal(weights, transform(scores, cfg, sessions=sessions))
    assert ((weights == 0) == (dropped > 0)).all()
    lowest = pd.Series(scores).rank(method="first", pct=True).to_numpy() <= 0.10
    assert (dropped[lowest] == 1).all()                      # the score rule, applied first, keeps its rows
    session_rank = pd.Series(scores).groupby(sessions).mean().rank(method="first", pct=True)
    low_session = pd.Series(sessions).map(session_rank).to_numpy() <= 0.10
    assert (dropped[low_session & ~lowest] == 2).all() and (low_session & ~lowest).any()
    assert (dropped[~lowest & ~low_session] == 0).all()


def test_reasons_follow_the_weight_bands_and_the_drop_rules():
    table = pd.DataFrame({"weight": [0.0, 0.2, 0.49, 0.5, 1.0, 2.0, 2.5], "evidence_loss": np.arange(7.0)})
    dropped = np.array([1, 0, 0, 0, 0, 0, 0])
    reasons = row_reasons(table, dropped, PLAIN, low_weight=0.5, high_weight=2.0)
    assert list(reasons) == [DROPPED_BY[1], "high loss", "high loss", TYPICAL, TYPICAL, TYPICAL, "low loss"]
    assert DROPPED_BY[1].endswith("(drop_lowest_percent)")   # the knob that set it


def test_an_estimator_reason_function_reads_the_low_rows_evidence():
    table = pd.DataFrame({"weight": [0.1, 0.2, 0.3, 1.0],
                          "evidence_p_bot_session": [0.9, 0.1, 0.5, 0.99],
                          "evidence_p_accidental_click": [0.0, 0.8, 0.5, 0.0]})
    estimator = Estimator("mixture", "retraining", lambda ctx: None, reason=low_weight_reason)
    reasons = row_reasons(table, np.zeros(4, dtype=np.int8), estimator, low_weight=0.5, high_weight=2.0)
    # The fourth row's evidence says bot, but its weight is typical: the band decides whether it is explained.
    assert list(reasons) == ["bot session", "accidental click", "bot session", TYPICAL]


@pytest.mark.parametrize("weights", [np.array([0.1, 0.1]), np.array([1.0, 1.0])])
def test_a_reason_for_every_row(weights):
    table = pd.DataFrame({"weight": weights})
    reasons = row_reasons(table, np.zeros(2, dtype=np.int8), PLAIN, 0.5, 2.0)
    assert len(reasons) == 2 and pd.notna(reasons).all()
