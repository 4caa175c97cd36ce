"""GraNd: the norm of each impression's loss gradient with respect to every trainable parameter of a
ranker fitted on the training slice for a few epochs. A row the model still fights (a bot's random
click, an accidental click) pulls hard on the weights, so its score is minus that norm.

Also the pieces the other gradient estimators share: knob parsing, training with per-epoch
checkpoints, batched per-sample gradient norms (torch.func) and the closed-form last-layer norm."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from pipeline import ranker
from pipeline.features import Features
from pipeline.importance.registry import Context, register

LOSSES = ("click", "click_purchase")


# ---- knobs and input checks -------------------------------------------------------------------

def knobs(ctx: Context, name: str) -> dict:
    cfg = ctx.params["importance"].get("estimators", {}).get(name)
    if not isinstance(cfg, dict) or not cfg:
        raise ValueError(f"importance.estimators.{name} is missing or empty in params")
    return cfg


def positive_int(cfg: dict, key: str, name: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"importance.estimators.{name}.{key} must be a positive integer, got {value!r}")
    return value


def checkpoint_epochs(cfg: dict, name: str) -> list[int]:
    """The epochs after which the model state is kept: a non-empty list of positive integers."""
    epochs = cfg.get("epochs")
    if (not isinstance(epochs, list) or not epochs
            or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in epochs)):
        raise ValueError(f"importance.estimators.{name}.epochs must be a non-empty list of positive integers "
                         f"(the checkpoints), got {epochs!r}")
    return sorted(set(epochs))


def loss_kind(cfg: dict, name: str) -> str:
    kind = cfg.get("loss")
    if kind not in LOSSES:
        raise ValueError(f"importance.estimators.{name}.loss must be one of {LOSSES}, got {kind!r}")
    return kind


def check_trainable(x: Features, what: str) -> None:
    if len(x) == 0:
        raise ValueError(f"{what} has no impressions to train on")
    clicks = int(x.click.sum())
    if clicks == 0 or clicks == len(x):
        raise ValueError(f"{what}: every impression has clicked={int(x.click[0])}; "
                         "the estimator needs both clicked and unclicked impressions to train on")


# ---- training with checkpoints ----------------------------------------------------------------

class _EpochSnapshots:
    """Passed to ranker.fit as its progress sink: copies the weights each time an epoch in `keep` ends,
    so the checkpoints come from one training run (one optimizer state), not restarts."""

    def __init__(self, model: nn.Module, rows: int, keep: list[int]):
        self.model, self.rows, self.keep = model, rows, set(keep)
        self.seen = 0
        self.states: list[dict[str, torch.Tensor]] = []

    def update(self, n: int) -> None:
        self.seen += n
        if self.seen % self.rows == 0 and self.seen // self.rows in self.keep:
            self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


def fit_checkpoints(ctx: Context, x: Features, seed: int, epochs: list[int]) -> list[ranker.Ranker]:
    """A ranker trained on `x` for max(epochs) epochs; one eval-mode copy per checkpoint epoch."""
    model = ranker.new_model(x.query.shape[1], ctx.params["ranker"], seed, x)
    snapshots = _EpochSnapshots(model, len(x), epochs)
    ranker.fit(model, x, None, ctx.params["train"], seed, ctx.device, epochs=max(epochs), progress=snapshots)
    if len(snapshots.states) != len(epochs):
        raise RuntimeError(f"kept {len(snapshots.states)} checkpoints for epochs {epochs}: ranker.fit no longer "
                           "reports every row of every epoch to its progress sink")
    models = []
    for state in snapshots.states:
        copy = ranker.Ranker(model.config)
        copy.load_state_dict(state)
        models.append(copy.to(ctx.device).eval())
    return models


# ---- per-sample gradient norms ----------------------------------------------------------------

class _SampleLoss(nn.Module):
    """The ranker's per-impression loss as a module, so functional_call can swap its parameters."""

    def __init__(self, model: ranker.Ranker, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: Features) -> torch.Tensor:
        click_loss, purchase_loss = ranker.loss_terms(self.model, x)
        return click_loss if self.kind == "click" else click_loss + purchase_loss


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(start + batch_size, n))


def gradient_sq_norms(model: ranker.Ranker, x: Features, kind: str, device: str, batch_size: int) -> np.ndarray:
    """||d loss(z) / d theta||^2 over all trainable parameters, per row, in eval mode (no dropout).

    vmap(grad) holds the gradients of one batch only; each is reduced to its squared norm at once."""
    module = _SampleLoss(model.to(device).eval(), kind)
    params = {k: p.detach() for k, p in module.named_parameters() if p.requires_grad}

    def one_row(theta, query, title, dense, position, click, purchase):
        x1 = Features(query[None], title[None], dense[None], position[None], click[None], purchase[None])
        return functional_call(module, theta, (x1,))[0]

    per_row = vmap(grad(one_row), in_dims=(None, 0, 0, 0, 0, 0, 0))
    out = []
    for index in _batches(len(x), batch_size):
        b = x.subset(index).to(device)
        grads = per_row(params, b.query, b.title, b.dense, b.position, b.click, b.purchase)
        sq = sum(g.reshape(len(index), -1).pow(2).sum(1) for g in grads.values())
        out.append(sq.detach().double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def last_layer_norms(model: ranker.Ranker, x: Features, device: str, batch_size: int) -> np.ndarray:
    """Closed form of the click loss gradient norm w.r.t. the click head (weights and bias).

    The click logit is z = w.h + b + position bias, so dBCE/d[w, b] = (sigmoid(z) - y) [h, 1] and its norm
    is |p - y| sqrt(|h|^2 + 1): one forward pass, no autograd."""
    model = model.to(device).eval()
    captured = {}
    hook = model.click_head.register_forward_hook(lambda _m, inputs, _o: captured.__setitem__("h", inputs[0]))
    try:
        out = []
        for index in _batches(len(x), batch_size):
            b = x.subset(index).to(device)
            free_logit, bias_logit, _ = model(b)
            p = torch.sigmoid(free_logit + bias_logit)
            h = captured["h"]
            norm = (p - b.click).abs() * torch.sqrt(h.pow(2).sum(1) + 1.0)
            out.append(norm.double().cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(out) if out else np.zeros(0)


# ---- the estimators ---------------------------------------------------------------------------

def _grand(ctx: Context, name: str, last_layer: bool) -> pd.DataFrame:
    cfg = knobs(ctx, name)
    epochs = checkpoint_epochs(cfg, name)
    seeds = positive_int(cfg, "seeds", name)
    batch_size = positive_int(cfg, "batch_size", name)
    kind = "click" if last_layer else loss_kind(cfg, name)
    day = ctx.data
    fit_x = day.x.subset(day.train_index)
    check_trainable(fit_x, f"{name}: the training slice")
    total = np.zeros(len(day.impressions), dtype=np.float64)
    count = 0
    for s in range(seeds):
        for model in fit_checkpoints(ctx, fit_x, ctx.seed + s, epochs):
            if last_layer:
                total += last_layer_norms(model, day.x, ctx.device, batch_size)
            else:
                total += np.sqrt(gradient_sq_norms(model, day.x, kind, ctx.device, batch_size))
            count += 1
    return pd.DataFrame({"event_id": day.impressions["event_id"].to_numpy(), "score": -total / count})


@register("grand", cost_class="per-sample-gradients")
def score(ctx: Context) -> pd.DataFrame:
    return _grand(ctx, "grand", last_layer=False)


@register("grand_last_layer", cost_class="per-sample-gradients")
def score_last_layer(ctx: Context) -> pd.DataFrame:
    return _grand(ctx, "grand_last_layer", last_layer=True)
