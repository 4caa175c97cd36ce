"""Training dynamics: train the ranker once on the training slice and watch every impression's click
margin at checkpoints along the way.

- aum: area under the margin (Pleiss et al. 2020), the mean margin over the checkpoints. A row whose
  label fights the rest of the data keeps a low or negative margin while its peers are learned.
- forgetting: forgetting events (Toneva et al. 2019), how often a row flips from correctly to wrongly
  classified between consecutive checkpoints; a row never learned counts as forgotten at every one.

The margin of a row with click label y and click logit z (at its logged position) is (2y - 1) * z.
Clicks are rare, so for forgetting a row counts as correctly classified when its predicted click
probability is on the side of the training click rate that matches its label, not the side of 0.5.
Holdout rows are never trained on; they are scored from the same checkpoints.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from pipeline.importance.registry import Context, register
from pipeline.model import ranker
from pipeline.model.dataset import DayData


def training_labels(day: DayData, name: str) -> np.ndarray:
    """Click labels of the training slice; a ValueError naming estimator `name` and the knob to turn
    when the slice cannot train a classifier."""
    train = day.train_index
    if len(train) == 0:
        raise ValueError(f"{name}: the log has no training rows (every impression is in the holdout slice); a lower "
                         "split.holdout_fraction or a longer log leaves some to train on")
    clicks = day.x.click[torch.as_tensor(train)].numpy()
    if clicks.min() == clicks.max():
        raise ValueError(f"{name}: every training impression has clicked={int(clicks[0])}; it needs both "
                         "clicked and unclicked impressions (a longer log, or another estimator: "
                         "importance.estimator)")
    return clicks


def positive_int(cfg: dict, key: str, name: str) -> int:
    value = int(cfg[key])
    if value < 1:
        raise ValueError(f"importance.estimators.{name}.{key} must be at least 1, got {value}")
    return value


class DynamicsRecorder:
    """Running statistics over checkpoints, O(rows) memory whatever the number of checkpoints.

    A checkpoint gives each row's click logit z at its logged position; with y the click label,
    margin = (2y - 1) * z, and the row is correctly classified when (2y - 1) * (z - offset) > 0,
    offset being the logit of the training click rate."""

    def __init__(self, n: int, offset: float, device: str):
        self.checkpoints = 0
        self.offset = offset
        self.margin_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.forgotten = torch.zeros(n, dtype=torch.int64, device=device)
        self.ever_correct = torch.zeros(n, dtype=torch.bool, device=device)
        self.last_correct = torch.zeros(n, dtype=torch.bool, device=device)

    def record(self, z: torch.Tensor, sign: torch.Tensor, rows: slice | torch.Tensor = slice(None)) -> None:
        """One checkpoint's click logits z for `rows` (a checkpoint may be recorded in several batches)."""
        correct = sign * (z - self.offset) > 0
        self.margin_sum[rows] += (sign * z).double()
        if self.checkpoints > 0:
            self.forgotten[rows] += (self.last_correct[rows] & ~correct).long()
        self.ever_correct[rows] |= correct
        self.last_correct[rows] = correct

    def close_checkpoint(self) -> None:
        self.checkpoints += 1

    def mean_margin(self) -> np.ndarray:
        return (self.margin_sum / max(self.checkpoints, 1)).cpu().numpy()

    def forgetting_counts(self) -> np.ndarray:
        """Forgetting events per row; never learned = forgotten at every checkpoint."""
        counts = torch.where(self.ever_correct, self.forgotten, torch.full_like(self.forgotten, self.checkpoints))
        return counts.cpu().numpy()


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def forgetting_counts(probs: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Forgetting events from a (checkpoints, rows) array of predicted click probabilities held in
    memory; a row is correct when its probability is on its label's side of `threshold`."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    sign = torch.from_numpy(2 * np.asarray(labels, dtype=np.float64) - 1)
    recorder = DynamicsRecorder(probs.shape[1], logit(threshold), "cpu")
    for row in probs:
        recorder.record(torch.from_numpy(np.log(row / (1 - row))), sign)
        recorder.close_checkpoint()
    return recorder.forgetting_counts()


@torch.no_grad()
def record_checkpoint(model: ranker.Ranker, day: DayData, signs: torch.Tensor, recorder: DynamicsRecorder,
                      device: str, batch_size: int) -> None:
    model.eval()
    n = len(day.x)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        batch = day.x.subset(torch.arange(rows.start, rows.stop)).to(device)
        free_logit, bias_logit, _ = model(batch)
        recorder.record(free_logit + bias_logit, signs[rows], rows)
    recorder.close_checkpoint()
    model.train()


def checkpoint_steps(steps_per_epoch: int, per_epoch: int) -> set[int]:
    """Steps (1-based, within an epoch) after which to record: evenly spaced, the last one included."""
    per_epoch = min(per_epoch, steps_per_epoch)
    return {math.ceil(steps_per_epoch * (i + 1) / per_epoch) for i in range(per_epoch)}


def train_and_record(ctx: Context, cfg: dict, name: str) -> DynamicsRecorder:
    """Train a fresh ranker on the training slice as ranker.fit does, recording every row's margin
    `checkpoints_per_epoch` times per epoch."""
    day, device = ctx.data, ctx.device
    clicks = training_labels(day, name)
    epochs = positive_int(cfg, "epochs", name)
    per_epoch = positive_int(cfg, "checkpoints_per_epoch", name)
    eval_batch = positive_int(cfg, "batch_size", name)
    train_cfg = ctx.params["train"]
    batch_size = int(train_cfg["batch_size"])

    rate = float(clicks.mean())
    signs = (2 * day.x.click - 1).to(device)

    train = day.train_index
    fit_x = day.x.subset(train)
    model = ranker.new_model(day.x.text_dim, ctx.params["ranker"], ctx.seed, fit_x).to(device)
    # Start at the base rate: otherwise the first checkpoints only show the intercept being learned,
    # and every click looks "learned" while the predicted rate is still near 0.5.
    with torch.no_grad():
        model.click_head.bias.fill_(logit(rate))
    generator = torch.Generator().manual_seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    data = fit_x.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["learning_rate"],
                                  weight_decay=train_cfg["weight_decay"])
    recorder = DynamicsRecorder(len(day.x), logit(rate), device)
    steps = math.ceil(len(train) / batch_size)
    record_after = checkpoint_steps(steps, per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).to(device)
        for step, start in enumerate(range(0, len(train), batch_size), start=1):
            loss = ranker.per_sample_loss(model, data.subset(order[start:start + batch_size])).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step in record_after:
                record_checkpoint(model, day, signs, recorder, device, eval_batch)
    model.eval()
    return recorder


@register("aum", cost_class="retraining", shardable=True,
          low_reason="low margin through training (AUM)", high_reason="high margin through training (AUM)")
def aum(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["aum"]
    margin = train_and_record(ctx, cfg, "aum").mean_margin().astype(np.float64)
    return ctx.select(margin, {"area_under_margin": margin})


@register("forgetting", cost_class="retraining", shardable=True,
          low_reason="forgotten during training", high_reason="learned and never forgotten")
def forgetting(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["forgetting"]
    tie_break = float(cfg["tie_break"])
    if not 0 <= tie_break < 1:
        raise ValueError(f"importance.estimators.forgetting.tie_break must be in [0, 1), got {tie_break}")
    recorder = train_and_record(ctx, cfg, "forgetting")
    # sigmoid(mean margin) is in (0, 1), so the tie-break never outweighs one forgetting event.
    margin = recorder.mean_margin()
    events = recorder.forgetting_counts()
    score = (-events + tie_break * torch.sigmoid(torch.from_numpy(margin)).numpy()).astype(np.float64)
    return ctx.select(score, {"forgetting_events": events, "mean_margin": margin})
