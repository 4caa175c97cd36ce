"""Data-OOB (Kwon and Zou 2023): bootstrap bags of a cheap click model on frozen features; a row's
value is how well the bags that left it out predict its label.

The head is a logistic regression on the ranker's inputs (query and title embeddings, their
product, the dense features, a one-hot of the position), standardised with training-slice
statistics. All bags train together as one (features x bags) weight matrix, each row weighted in
each bag by its bootstrap count, so one pass over the data trains every bag. Features are built
batch by batch, never for the whole log at once.

Score = mean over out-of-bag bags of the probability the head gives the row's label; a training
row that is in every bag gets the mean over all bags, and holdout rows (never in a bag) too.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from pipeline.importance.estimators.training_dynamics import logit, positive_int, training_labels
from pipeline.importance.registry import Context, register
from pipeline.model.features import Features


def head_inputs(x: Features, max_position: int) -> torch.Tensor:
    position = F.one_hot(x.position.clamp(0, max_position), max_position + 1).to(x.query.dtype)
    return torch.cat([x.query, x.title, x.query * x.title, x.dense, position], dim=1)


def batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(start + batch_size, n))


@torch.no_grad()
def standardiser(x: Features, max_position: int, device: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of every head input over `x`, in one streaming pass; constant columns get std 1."""
    total = sq = None
    for index in batches(len(x), batch_size):
        h = head_inputs(x.subset(index).to(device), max_position).double()
        total = h.sum(0) if total is None else total + h.sum(0)
        sq = (h * h).sum(0) if sq is None else sq + (h * h).sum(0)
    mean = total / len(x)
    std = (sq / len(x) - mean * mean).clamp(min=0).sqrt()
    return mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()


def bootstrap_counts(n: int, bags: int, rng: np.random.Generator) -> np.ndarray:
    """(n, bags) times each row is drawn in each bag: n draws with replacement per bag."""
    counts = np.empty((n, bags), dtype=np.uint8)
    for b in range(bags):
        # uint8 holds any count a fair bootstrap will realistically draw; clip so it can never wrap.
        counts[:, b] = np.minimum(np.bincount(rng.integers(0, n, size=n), minlength=n), 255)
    return counts


def oob_mean(correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row: mean of `correct` over the bags whose count for the row is 0; the mean over all bags
    for a row that is in every bag."""
    out_of_bag = counts == 0
    n_oob = out_of_bag.sum(axis=1)
    oob = (correct * out_of_bag).sum(axis=1) / np.maximum(n_oob, 1)
    return np.where(n_oob > 0, oob, correct.mean(axis=1))


class BaggedHeads:
    """`bags` logistic regressions over the same standardised inputs."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, bags: int, intercept: float, max_position: int):
        self.mean, self.std, self.max_position = mean, std, max_position
        self.weight = torch.zeros(len(mean), bags, device=mean.device, requires_grad=True)
        self.bias = torch.full((bags,), intercept, device=mean.device, requires_grad=True)

    def logits(self, x: Features) -> torch.Tensor:
        return ((head_inputs(x, self.max_position) - self.mean) / self.std) @ self.weight + self.bias

    @torch.no_grad()
    def label_probs(self, batch: Features) -> np.ndarray:
        """(rows, bags): the probability each bag's head gives the row's logged click label."""
        p = torch.sigmoid(self.logits(batch))
        y = batch.click[:, None]
        return (y * p + (1 - y) * (1 - p)).double().cpu().numpy()


def fit_bags(x: Features, counts: np.ndarray, cfg: dict, max_position: int, seed: int, device: str) -> BaggedHeads:
    """Train every bag at once: minibatches over the rows, each row's loss in bag b weighted by its
    bootstrap count there (expected 1, so dividing by the batch size gives each bag's mean loss)."""
    batch_size = positive_int(cfg, "batch_size", "data_oob")
    epochs = positive_int(cfg, "epochs", "data_oob")
    mean, std = standardiser(x, max_position, device, batch_size)
    rate = float(x.click.mean())
    heads = BaggedHeads(mean, std, counts.shape[1], logit(rate), max_position)
    optimizer = torch.optim.AdamW([heads.weight, heads.bias], lr=float(cfg["learning_rate"]),
                                  weight_decay=float(cfg["weight_decay"]))
    generator = torch.Generator().manual_seed(seed)
    counts_t = torch.from_numpy(counts)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            batch = x.subset(index).to(device)
            weight = counts_t[index].to(device).float()
            logits = heads.logits(batch)
            loss = F.binary_cross_entropy_with_logits(logits, batch.click[:, None].expand_as(logits),
                                                      reduction="none")
            loss = (loss * weight).sum() / len(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return heads


@register("data_oob", cost_class="retraining", shardable=True,
          low_reason="out-of-bag models mispredict it", high_reason="out-of-bag models predict it")
def score(ctx: Context) -> pd.DataFrame:
    cfg = ctx.params["importance"]["estimators"]["data_oob"]
    bags = positive_int(cfg, "bags", "data_oob")
    batch_size = positive_int(cfg, "batch_size", "data_oob")
    day = ctx.data
    training_labels(day, "data_oob")
    max_position = int(ctx.params["ranker"]["max_position"])
    train_x = day.x.subset(day.train_index)
    counts = bootstrap_counts(len(train_x), bags, np.random.default_rng(ctx.seed))
    heads = fit_bags(train_x, counts, cfg, max_position, ctx.seed, ctx.device)
    values = np.zeros(len(day.impressions), dtype=np.float64)
    # Batch by batch, so the (rows x bags) probabilities never exist for the whole log at once.
    for index in batches(len(train_x), batch_size):
        probs = heads.label_probs(train_x.subset(index).to(ctx.device))
        values[day.train_index[index.numpy()]] = oob_mean(probs, counts[index.numpy()])
    holdout_x = day.x.subset(day.holdout_index)
    for index in batches(len(holdout_x), batch_size):
        probs = heads.label_probs(holdout_x.subset(index).to(ctx.device))
        values[day.holdout_index[index.numpy()]] = probs.mean(axis=1)
    return ctx.select(values, {"out_of_bag_accuracy": values})
