"""The noise_mixture estimator's mixture of human and bot sessions, on arrays with a known truth.
(Its run on a simulated log, with every other estimator, is in test_estimators.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.importance.estimators.noise_mixture import clean_log_probability, fit_mixture, session_affinity

SESSIONS, ROWS_PER_SESSION = 3000, 40


def sessions(bot_share: float, seed: int = 0):
    """Human sessions clicking as p says (position decay x attractiveness); bot sessions clicking at the
    humans' own mean rate anywhere."""
    rng = np.random.default_rng(seed)
    n = SESSIONS * ROWS_PER_SESSION
    session = np.repeat(np.arange(SESSIONS), ROWS_PER_SESSION)
    position = np.tile(np.arange(1, ROWS_PER_SESSION + 1), SESSIONS)
    p = np.clip(position ** -0.9 * rng.beta(1.0, 1.0, n), 0.002, 0.98)
    bot_session = rng.random(SESSIONS) < bot_share
    bot = bot_session[session]
    click = np.where(bot, rng.random(n) < p.mean(), rng.random(n) < p).astype(np.float64)
    return p, click, session, bot_session


def fit(p, click, session, rates=(1.0, 2.5)):
    return fit_mixture(p, click, session, [r * click.mean() for r in rates], bot_share=0.02, iterations=200,
                       tol=1e-9)


def test_bots_clicking_at_the_humans_rate_are_found_by_where_they_click():
    p, click, session, bot_session = sessions(0.05)
    mixture = fit(p, click, session)
    assert roc_auc_score(bot_session, mixture.bot_posterior) > 0.9
    assert mixture.bot_shares.sum() == pytest.approx(bot_session.mean(), abs=0.015)
    # The component holding the bots clicks at their rate (the humans' mean click probability).
    main = int(np.argmax(mixture.bot_shares))
    assert mixture.bot_click_rates[main] == pytest.approx(p.mean(), rel=0.2)


def test_a_log_without_bots_keeps_almost_every_session_human():
    p, click, session, bot_session = sessions(0.0)
    assert not bot_session.any()
    mixture = fit(p, click, session)
    assert mixture.bot_shares.sum() < 0.01
    assert (mixture.bot_posterior > 0.5).mean() < 0.01


def test_a_bot_clicking_far_more_than_humans_is_caught_by_the_high_rate_component():
    rng = np.random.default_rng(3)
    p, click, session, _ = sessions(0.0)
    heavy = rng.random(SESSIONS) < 0.04
    rows = heavy[session]
    click[rows] = (rng.random(rows.sum()) < 0.4).astype(np.float64)
    mixture = fit(p, click, session)
    assert roc_auc_score(heavy, mixture.bot_posterior) > 0.99
    assert mixture.bot_click_rates.max() == pytest.approx(0.4, abs=0.05)


def test_an_unlikely_click_in_a_human_session_scores_below_a_likely_one():
    p, click, session, _ = sessions(0.0)
    mixture = fit(p, click, session)
    score = clean_log_probability(p, click, session, mixture, accidental_rate=0.01)
    assert np.isfinite(score).all() and (score <= 0).all()
    human = mixture.bot_posterior[session] < 0.01
    unlikely = human & (click > 0) & (p < 0.02)
    likely = human & (click > 0) & (p > 0.3)
    unclicked = human & (click == 0)
    assert unlikely.any() and likely.any()
    assert score[unlikely].max() < score[likely].min()
    # An unclicked row of a human session is clean unless its session is a bot's.
    np.testing.assert_allclose(score[unclicked], np.log(1 - mixture.bot_posterior[session[unclicked]]), atol=1e-9)


def test_every_row_of_a_bot_session_scores_low():
    p, click, session, bot_session = sessions(0.05, seed=1)
    mixture = fit(p, click, session)
    score = clean_log_probability(p, click, session, mixture, accidental_rate=0.01)
    bot = bot_session[session]
    assert roc_auc_score(bot, -score) > 0.85
    assert roc_auc_score(bot[click == 0], -score[click == 0]) > 0.85  # its unclicked rows too


def test_session_affinity_learns_that_humans_click_their_favourite_category_and_finds_more_bots():
    """Humans click items of their session's favourite category (one of four) far more often; the
    ranker's probability knows nothing of it. Bots click anywhere at the humans' mean rate."""
    rng = np.random.default_rng(5)
    p, _, session, bot_session = sessions(0.05, seed=5)
    category = rng.integers(0, 4, len(p)).astype(str).astype(object)
    favourite = rng.integers(0, 4, SESSIONS).astype(str)[session]
    true_p = np.clip(np.where(category == favourite, 4.0, 0.3) * p, 0.001, 0.98)
    bot = bot_session[session]
    click = np.where(bot, rng.random(len(p)) < true_p.mean(), rng.random(len(p)) < true_p).astype(np.float64)
    category[rng.random(len(p)) < 0.05] = None  # rows without a category get no same-category evidence
    refined = session_affinity(p, click, session, category)
    assert refined.shape == p.shape and ((refined > 0) & (refined < 1)).all()
    human_rows = ~bot & (category != None)  # noqa: E711 (elementwise)
    assert roc_auc_score(category[human_rows] == favourite[human_rows], refined[human_rows] / p[human_rows]) > 0.6
    before = roc_auc_score(bot_session, fit(p, click, session).bot_posterior)
    after = roc_auc_score(bot_session, fit(refined, click, session).bot_posterior)
    assert after > before + 0.015
    # A log without clicks has nothing to learn from: the ranker's probabilities come back.
    np.testing.assert_allclose(session_affinity(p, np.zeros(len(p)), session, category), np.clip(p, 1e-4, 1 - 1e-4))


@pytest.mark.parametrize("args, message", [
    (dict(p=[0.1, 0.2], click=[0, 1], session=[1]), "differ in length"),
    (dict(p=[], click=[], session=[]), "no impressions"),
    (dict(p=[0.1], click=[1], session=[1], rates=[]), "at least one bot click rate"),
    (dict(p=[0.1], click=[1], session=[1], share=0.6), "must lie in (0, 1)"),
])
def test_bad_arrays_are_refused(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_mixture(args["p"], args["click"], args["session"], args.get("rates", [0.1, 0.3]),
                    bot_share=args.get("share", 0.02), iterations=5, tol=1e-6)
