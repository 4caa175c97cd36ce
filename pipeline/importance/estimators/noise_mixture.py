"""Noise mixture: the probability that an impression is clean, under a mixture of human and bot sessions.

Humans click as a cross-fitted ranker predicts at the logged position (each row scored by a fold model
that never saw it). Bots click at random, whatever the position or the item, each bot component at a
click rate of its own; EM fits the components' shares of sessions and their click rates. A session's
evidence adds up over its rows, so a bot clicking at the log's own rate is found by the clicks it puts
where humans do not click and the ones it leaves where they do.

A human click can still be accidental. Accidental clicks land anywhere at a floor rate q, the
`accidental_quantile` of the predicted click probabilities, so q / p of a click predicted at p is
accidental.

Humans' clicks in a session also cluster on the categories they like, and bots' do not. With
`session_affinity`, the human click probability is refined by a logistic regression of the log's clicks
on the ranker's logit and on the session's other clicks: whether, and how often, it clicked elsewhere on
the row's category, and whether it clicked elsewhere at all.

score = log P(clean) = log(P(human session) * (1 - P(accidental click))), so at temperature 1 a row's
weight before clipping is the probability that it is clean. `fit_mixture` works on plain arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.importance.estimators._crossfit import out_of_fold_click_probabilities
from pipeline.importance.estimators.click_model import impression_log_likelihood
from pipeline.importance.registry import Context, register


@dataclass(frozen=True)
class Mixture:
    bot_posterior: np.ndarray    # (n_sessions,) P(the session is a bot's)
    bot_shares: np.ndarray       # (components,) share of sessions of each bot component
    bot_click_rates: np.ndarray  # (components,) each component's click rate
    iterations: int


def fit_mixture(p_human, click, session, bot_click_rates, *, bot_share: float, iterations: int, tol: float,
                eps: float = 1e-4) -> Mixture:
    """EM over sessions: one human component with known click probabilities `p_human`, and one bot
    component per entry of `bot_click_rates` (starting rates), each clicking at a single rate."""
    p_human = np.clip(np.asarray(p_human, dtype=np.float64), eps, 1 - eps)
    click = np.asarray(click, dtype=np.float64)
    session = np.asarray(session)
    if not (len(p_human) == len(click) == len(session)):
        raise ValueError(f"fit_mixture: arrays differ in length ({len(p_human)}, {len(click)}, {len(session)})")
    if len(click) == 0:
        raise ValueError("fit_mixture: no impressions")
    rates = np.clip(np.asarray(bot_click_rates, dtype=np.float64), eps, 1 - eps)
    if rates.ndim != 1 or len(rates) == 0:
        raise ValueError("fit_mixture: give at least one bot click rate")
    if not 0 < bot_share * len(rates) < 1:
        raise ValueError(f"fit_mixture: bot_share {bot_share} x {len(rates)} components must lie in (0, 1)")
    codes, _ = pd.factorize(session)
    n_sessions = int(codes.max()) + 1
    clicks_of = np.bincount(codes, weights=click, minlength=n_sessions)
    rows_of = np.bincount(codes, minlength=n_sessions).astype(np.float64)
    human = np.bincount(codes, weights=impression_log_likelihood(p_human, click), minlength=n_sessions)
    shares = np.full(len(rates), float(bot_share))
    previous = -np.inf
    for iteration in range(1, iterations + 1):
        # Log-likelihood of each session under each component: the human one, then the bots.
        bots = clicks_of[None, :] * np.log(rates)[:, None] + (rows_of - clicks_of)[None, :] * np.log1p(-rates)[:, None]
        joint = np.vstack([np.log1p(-shares.sum()) + human, np.log(shares)[:, None] + bots])
        top = joint.max(axis=0)
        total = top + np.log(np.exp(joint - top).sum(axis=0))
        posterior = np.exp(joint - total)
        shares = np.clip(posterior[1:].mean(axis=1), eps, None)
        shares = shares / max(1.0, shares.sum() / (1 - eps))
        weight_rows = posterior[1:] @ rows_of
        rates = np.clip(np.where(weight_rows > 0, (posterior[1:] @ clicks_of) / np.maximum(weight_rows, eps), rates),
                        eps, 1 - eps)
        mean_ll = float(total.sum() / len(click))
        if abs(mean_ll - previous) < tol:
            break
        previous = mean_ll
    return Mixture(bot_posterior=1.0 - posterior[0], bot_shares=shares, bot_click_rates=rates, iterations=iteration)


def session_affinity(p_human, click, session, category, eps: float = 1e-4) -> np.ndarray:
    """The human click probability refined by the session's other clicks (see the module's docstring).
    Rows without a category get no same-category evidence."""
    from sklearn.linear_model import LogisticRegression

    p = np.clip(np.asarray(p_human, dtype=np.float64), eps, 1 - eps)
    click = np.asarray(click, dtype=np.float64)
    if len(np.unique(click)) < 2:
        return p
    frame = pd.DataFrame({"session": np.asarray(session), "category": np.asarray(category, dtype=object),
                          "click": click})
    same = frame.groupby(["session", "category"], dropna=False)["click"].transform("sum").to_numpy() - click
    same = np.where(frame["category"].isna().to_numpy(), 0.0, same)
    elsewhere = frame.groupby("session")["click"].transform("sum").to_numpy() - click
    features = np.column_stack([np.log(p / (1 - p)), same > 0, np.log1p(same), elsewhere > 0])
    model = LogisticRegression(max_iter=1000).fit(features, click)
    return np.clip(model.predict_proba(features)[:, 1], eps, 1 - eps)


def component_posteriors(p_human, click, session, mixture: Mixture, accidental_rate: float,
                         eps: float = 1e-4) -> dict[str, np.ndarray]:
    """Per row: P(its session is a bot's), P(its click is accidental) (0 for an unclicked row) and
    P(clean) = P(human session) x P(not accidental)."""
    p_human = np.clip(np.asarray(p_human, dtype=np.float64), eps, 1 - eps)
    codes, _ = pd.factorize(np.asarray(session))
    bot = mixture.bot_posterior[codes]
    accidental = np.where(np.asarray(click) > 0, np.minimum(1.0, accidental_rate / p_human), 0.0)
    return {"p_bot_session": bot, "p_accidental_click": accidental, "p_clean": (1.0 - bot) * (1.0 - accidental)}


def clean_log_probability(p_human, click, session, mixture: Mixture, accidental_rate: float,
                          eps: float = 1e-4) -> np.ndarray:
    """log P(clean) per row: its session is human's and, when clicked, the click is not accidental."""
    return log_clean(component_posteriors(p_human, click, session, mixture, accidental_rate, eps)["p_clean"], eps)


def log_clean(p_clean: np.ndarray, eps: float) -> np.ndarray:
    """The score: log P(clean), kept above log(eps)."""
    return np.log(np.clip(p_clean, eps, 1.0))


def low_weight_reason(evidence: pd.DataFrame) -> np.ndarray:
    """The component that explains a row best: a bot's session or an accidental click, whichever is
    likelier; a row likely under both keeps its bot label (the session's evidence is the broader)."""
    bot = evidence["evidence_p_bot_session"].to_numpy()
    accidental = evidence["evidence_p_accidental_click"].to_numpy()
    return np.where(bot >= accidental, "bot session", "accidental click")


@register("noise_mixture", cost_class="retraining", shardable=True, high_reason="clean human impression",
          reason=low_weight_reason)
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["noise_mixture"]
    k = int(cfg["folds"])
    day = ctx.data
    p_human = out_of_fold_click_probabilities(ctx, k, "importance.estimators.noise_mixture.folds", "noise_mixture",
                                              int(cfg["epochs"]), calibrated_start=bool(cfg["calibrated_start"]))
    click = day.impressions["clicked"].to_numpy().astype(np.float64)
    session = day.impressions["session_id"].to_numpy()
    log_ctr = float(click.mean())
    if log_ctr == 0:
        raise ValueError("noise_mixture: the log has no clicks; a click model cannot be fitted")
    eps = float(cfg["eps"])
    if cfg["session_affinity"]:
        category = day.impressions["item_id"].map(day.catalog.set_index("item_id")["category"]).to_numpy()
        p_human = session_affinity(p_human, click, session, category, eps)
    starting_rates = [min(1 - eps, float(m) * log_ctr) for m in cfg["bot_click_rates"]]
    mixture = fit_mixture(p_human, click, session, starting_rates, bot_share=float(cfg["bot_share"]),
                          iterations=int(cfg["iterations"]), tol=float(cfg["tol"]), eps=eps)
    accidental_rate = float(np.quantile(np.clip(p_human, eps, 1 - eps), float(cfg["accidental_quantile"])))
    posteriors = component_posteriors(p_human, click, session, mixture, accidental_rate, eps)
    return ctx.select(log_clean(posteriors["p_clean"], eps), {**posteriors, "p_click_human": p_human})
