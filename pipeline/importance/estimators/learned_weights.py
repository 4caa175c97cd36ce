"""Learned weights: per-impression weights learned jointly with a ranker against a clean validation
slice, by meta-reweighting (Ren et al. 2018, "Learning to Reweight Examples for Robust Deep Learning").

One training run of the ranker (pipeline.model.ranker.Ranker, click loss only, AdamW with train:'s learning
rate and weight decay). At every step, for a batch B and a batch V of the validation slice:
1. virtual SGD step on the eps-weighted batch loss: theta'(eps) = theta - lr * grad sum_i eps_i l_i(theta);
2. validation loss L_V(theta'(eps)), the mean click loss over V;
3. raw weight of each row max(0, -d L_V / d eps_i) at eps = 0: whether up-weighting the row would
   lower the validation loss (its gradient agrees with the validation gradient);
4. raw weights normalised in the batch (mean 1 per click label, below), and the real step taken
   with them.
The virtual step is written out with torch.func: grad over eps of the validation loss at parameters
that are themselves a grad over theta of the weighted batch loss, both through functional_call
(eval mode, so a dropout draw does not move the weights).

Score of an impression = its normalised weight averaged over the epochs (a row is in one batch per
epoch). A bot's random click or an accidental click pulls the ranker away from what the clean slice
says and gets weight 0. Rows not trained on ride along in the batches and get the weight they would
have had, but do not enter the real step: the holdout time slice, and the validation slice itself,
kept apart from training as in the paper.

Two choices differ from the paper, both because clicks are rare and the slice is chosen by a model:
- The validation loss is taken after refitting its click-logit intercept on V (a shift b, fitted
  exactly, treated as a constant: by the envelope theorem that is the gradient of min_b L_V). The
  slice is trusted for which impressions get clicked, not for how often: its click rate is shaped
  by how it is selected. With the plain loss, the slice's lower click rate dominates the meta
  gradient and zeroes every click of a batch together.
- Weights are normalised to mean 1 among the clicked rows of the batch and among the unclicked
  ones, as the weight transform balances them (importance.balance_by), since a click's gradient
  is an order of magnitude larger than a non-click's.
On the 50k-row simulated benchmark log (params as in params.yaml) the paper's form ranks no noise
within a label (detection AUROC 0.50 among clicked rows, 0.44 among the others, 0.58 overall);
with these two choices, 0.69, 0.55 and 0.65.

The clean validation slice (`validation`) comes from the log alone (never the simulator's truth):
- click_model: the sessions the position-based click model (click_model.py, with its own knobs)
  finds most plausible: by mean click log-likelihood of the session, the top `validation_fraction`
  of the sessions with a click and, separately, of those without, so both labels stay represented.
- purchase_sessions: every row of the sessions with a purchase (a purchase follows a real click).
- holdout: the holdout time slice.
click_model separates noise best on the simulated logs (detection AUROC 0.65 on the benchmark log,
0.69 on the test log); purchase_sessions 0.63 and 0.57 (they keep accidental clicks and every row
of a buyer's session); holdout 0.39 and 0.33: it holds as much noise as the rest of the log, and the
weights then favour rows that agree with the noise.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, grad
from torch.nn import functional as F

from pipeline.importance.estimators import click_model
from pipeline.importance.registry import Context, register
from pipeline.model import ranker
from pipeline.model.features import Features

NAME = "learned_weights"
VALIDATION_SOURCES = ("click_model", "purchase_sessions", "holdout")


# ---- knobs --------------------------------------------------------------------------------------

def knobs(ctx: Context) -> dict:
    cfg = ctx.params["importance"].get("estimators", {}).get(NAME)
    if not isinstance(cfg, dict) or not cfg:
        raise ValueError(f"importance.estimators.{NAME} is missing or empty in params")
    return cfg


def positive_int(cfg: dict, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"importance.estimators.{NAME}.{key} must be a positive integer, got {value!r}")
    return value


def share(cfg: dict, key: str) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"importance.estimators.{NAME}.{key} must be a number in (0, 1], got {value!r}")
    return float(value)


def validation_source(cfg: dict) -> str:
    source = cfg.get("validation")
    if source not in VALIDATION_SOURCES:
        raise ValueError(f"importance.estimators.{NAME}.validation must be one of {VALIDATION_SOURCES}, "
                         f"got {source!r}")
    return source


# ---- the meta step ------------------------------------------------------------------------------

class ClickLoss(nn.Module):
    """The ranker's per-impression click loss (ranker.loss_terms' first term) as a module, so
    functional_call can swap its parameters; `shift` is added to every click logit."""

    def __init__(self, model: ranker.Ranker):
        super().__init__()
        self.model = model

    def forward(self, x: Features, shift: float | torch.Tensor = 0.0) -> torch.Tensor:
        free_logit, bias_logit, _ = self.model(x)
        return F.binary_cross_entropy_with_logits(free_logit + bias_logit + shift, x.click, reduction="none")


@torch.no_grad()
def intercept_shift(loss: ClickLoss, x: Features, iterations: int = 25, bound: float = 20.0) -> torch.Tensor:
    """The shift b of the click logit minimising the mean click loss over x (Newton's method on a
    convex function of one variable): with it the model's click rate on x is x's click rate."""
    free_logit, bias_logit, _ = loss.model(x)
    z = free_logit + bias_logit
    b = torch.zeros((), dtype=z.dtype, device=z.device)
    for _ in range(iterations):
        p = torch.sigmoid(z + b)
        b = (b - (p - x.click).mean() / (p * (1 - p)).mean().clamp(min=1e-6)).clamp(-bound, bound)
    return b


def meta_weights(loss: nn.Module, params: dict[str, torch.Tensor], batch: Features, validation: Features,
                 virtual_lr: float, shift: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Raw weight per batch row: max(0, -d L_V(theta'(eps)) / d eps_i) at eps = 0, where
    theta'(eps) = theta - virtual_lr * grad_theta sum_i eps_i l_i(theta) and L_V is the mean loss over
    `validation` (logits shifted by `shift`). `loss` maps Features to per-row losses; `params` are
    the parameters to differentiate (the others keep the module's values)."""

    def weighted_batch_loss(theta, eps):
        return (functional_call(loss, theta, (batch,)) * eps).sum()

    def validation_loss_after_virtual_step(eps):
        step = grad(weighted_batch_loss)(params, eps)
        virtual = {k: params[k] - virtual_lr * step[k] for k in params}
        return functional_call(loss, virtual, (validation, shift)).mean()

    eps = torch.zeros(len(batch), dtype=batch.click.dtype, device=batch.click.device)
    return (-grad(validation_loss_after_virtual_step)(eps)).clamp(min=0)


def normalise(raw: torch.Tensor, click: torch.Tensor) -> torch.Tensor:
    """Mean 1 among the batch's clicked rows and among its unclicked rows; a label whose raw weights
    are all zero (no such row would lower the validation loss) keeps zeros."""
    out = torch.zeros_like(raw)
    for label in (0.0, 1.0):
        rows = click == label
        total = raw[rows].sum()
        if total > 0:
            out[rows] = raw[rows] * (int(rows.sum()) / total)
    return out


# ---- the validation slice -----------------------------------------------------------------------

def top_sessions(session_score: np.ndarray, session: np.ndarray, has_click: np.ndarray, fraction: float) -> np.ndarray:
    """Rows of the top `fraction` of sessions by score, taken separately among the sessions with a
    click and those without (per-row arrays; a session's rows share its score and has_click)."""
    keep = np.zeros(len(session), dtype=bool)
    for group in (True, False):
        in_group = has_click == group
        sessions, first = np.unique(session[in_group], return_index=True)
        if len(sessions) == 0:
            continue
        scores = session_score[in_group][first]
        n_keep = max(1, int(round(fraction * len(sessions))))
        order = np.lexsort((sessions, -scores))  # by score, ties by session code: the same on every run
        keep |= np.isin(session, sessions[order[:n_keep]])
    return keep


def plausible_sessions(ctx: Context, fraction: float) -> np.ndarray:
    """Rows of the sessions whose clicks the position-based click model finds most likely."""
    model, coded = click_model.fit_context(ctx)
    eps = float(ctx.params["importance"]["estimators"]["click_model"]["eps"])
    p = click_model.click_probability(model, coded.position, coded.pair, eps)
    plausibility = click_model.session_log_likelihood(p, coded.click, coded.session)
    has_click = (np.bincount(coded.session, weights=coded.click) > 0)[coded.session]
    return top_sessions(plausibility, coded.session, has_click, fraction)


def purchase_sessions(impressions: pd.DataFrame) -> np.ndarray:
    session, _ = pd.factorize(impressions["session_id"], sort=True)
    bought = np.bincount(session, weights=impressions["purchased"].to_numpy(dtype=np.float64)) > 0
    return bought[session]


def validation_rows(ctx: Context, cfg: dict) -> np.ndarray:
    """Boolean per row: the clean validation slice named by `validation`."""
    source = validation_source(cfg)
    day = ctx.data
    if source == "holdout":
        mask = day.holdout.copy()
    elif source == "purchase_sessions":
        mask = purchase_sessions(day.impressions)
    else:
        mask = plausible_sessions(ctx, share(cfg, "validation_fraction"))
    clicks = day.x.click.numpy()[mask]
    if len(clicks) == 0 or clicks.min() == clicks.max():
        raise ValueError(f"{NAME}: the validation slice ({source}) has {len(clicks)} rows; it needs both clicked "
                         f"and unclicked impressions (importance.estimators.{NAME}.validation picks another "
                         f"slice, validation_fraction a larger one)")
    return mask


# ---- the run ------------------------------------------------------------------------------------

def check_trainable(x: Features) -> None:
    if len(x) == 0:
        raise ValueError(f"{NAME}: no impressions left to train on outside the holdout and validation slices "
                         f"(lower split.holdout_fraction or importance.estimators.{NAME}.validation_fraction)")
    clicks = int(x.click.sum())
    if clicks == 0 or clicks == len(x):
        raise ValueError(f"{NAME}: every impression to train on has clicked={int(x.click[0])}; the estimator "
                         "needs both clicked and unclicked impressions to train on (a longer log, or another "
                         "estimator: importance.estimator)")


def validation_sample(validation_index: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A fresh validation batch for each step: the whole slice when it is no larger than `size`, else
    `size` rows drawn with replacement (cheap on a large log, where repeats are rare)."""
    if len(validation_index) <= size:
        return validation_index
    return validation_index[torch.randint(len(validation_index), (size,), generator=generator)]


def learn_weights(ctx: Context, cfg: dict) -> np.ndarray:
    """One meta-reweighted training run over the log: each row's normalised weight averaged over epochs."""
    epochs = positive_int(cfg, "epochs")
    batch_size = positive_int(cfg, "batch_size")
    validation_batch = positive_int(cfg, "validation_batch_size")
    day, device = ctx.data, ctx.device
    validation = validation_rows(ctx, cfg)
    trained = ~day.holdout & ~validation
    fit_x = day.x.subset(np.flatnonzero(trained))
    check_trainable(fit_x)
    train_cfg = ctx.params["train"]
    # The real step's rate; also the virtual step's, whose rate cancels in the normalisation.
    lr = float(train_cfg["learning_rate"])

    model = ranker.new_model(day.x.text_dim, ctx.params["ranker"], ctx.seed, fit_x).to(device)
    loss = ClickLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=train_cfg["weight_decay"])
    generator = torch.Generator().manual_seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    data = day.x.to(device)
    trained_t = torch.from_numpy(trained).to(device)
    validation_index = torch.from_numpy(np.flatnonzero(validation))
    total = torch.zeros(len(day.x), dtype=torch.float64, device=device)
    for _ in range(epochs):
        order = torch.randperm(len(day.x), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size].to(device)
            val = data.subset(validation_sample(validation_index, validation_batch, generator).to(device))
            batch = data.subset(index)
            model.eval()  # no dropout in the meta step
            params = {k: p.detach() for k, p in loss.named_parameters()}
            raw = meta_weights(loss, params, batch, val, lr, intercept_shift(loss, val))
            weights = normalise(raw.detach(), batch.click)
            total[index] += weights.double()
            model.train()
            step_weights = weights * trained_t[index]
            if step_weights.sum() > 0:
                optimizer.zero_grad(set_to_none=True)
                ((loss(batch) * step_weights).sum() / len(index)).backward()
                optimizer.step()
    model.eval()
    return (total / epochs).cpu().numpy()


@register(NAME, cost_class="retraining", shardable=True,
          low_reason="meta-learning weighed it down", high_reason="meta-learning weighed it up")
def score(ctx: Context) -> pd.DataFrame:
    # Every row's weight comes from the one run over the whole log; a shard only selects its rows.
    weights = learn_weights(ctx, knobs(ctx))
    return ctx.select(weights, {"learned_weight": weights})
