"""The ranker's training loop: weighted minibatches with gradient accumulation, bf16 autocast on CUDA,
DataLoader workers, early stopping on a validation slice, checkpoints that a killed run resumes from to
the same final weights, and DistributedDataParallel when launched by torchrun.

Under torchrun (WORLD_SIZE set) every rank walks the same shuffled order (same seed on every rank)
and each step takes a global micro-batch of world size x batch_size rows, of which every rank gets a
disjoint batch_size share; the loss is scaled so that DDP's gradient average equals the gradient of
the global batch's weighted mean (the importance weights apply per row). N ranks therefore take N
times fewer, N times larger steps than one: other weights than one process, the same for a given N.
Rank 0 alone writes checkpoints (and, in the train stage, outputs); every rank resumes from them.
Without torchrun the same code runs as a world of one, exactly as before.

Given a StepLog (the train stage's; the importance estimators pass none), the loop also records every
optimizer step's weighted training loss over the global batch and its learning rate, and keeps that
curve beside the checkpoints, so a resumed run's curve still starts at step 1.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import read_json, write_json_atomic
from pipeline.model.checkpoints import Checkpoints, LoopState, restore
from pipeline.model.distributed import World, all_ranks_mean, leaders, start_distributed
from pipeline.model.features import Features


@dataclass
class LoopKnobs:
    """The knobs of params.yaml's train: section that the loop reads (estimators pass their own)."""
    batch_size: int
    learning_rate: float
    weight_decay: float
    accumulation_steps: int = 1
    max_steps: int | None = None
    precision: str = "auto"
    loader_workers: int = 0
    checkpoint_every_steps: int = 0
    patience: int = 0
    min_delta: float = 0.0

    @classmethod
    def from_params(cls, cfg: dict) -> "LoopKnobs":
        stopping = cfg.get("early_stopping") or {}
        knobs = cls(batch_size=int(cfg["batch_size"]), learning_rate=float(cfg["learning_rate"]),
                    weight_decay=float(cfg["weight_decay"]),
                    accumulation_steps=int(cfg.get("accumulation_steps", 1)),
                    max_steps=None if cfg.get("max_steps") is None else int(cfg["max_steps"]),
                    precision=str(cfg.get("precision", "auto")),
                    loader_workers=int(cfg.get("loader_workers", 0)),
                    checkpoint_every_steps=int(cfg.get("checkpoint_every_steps", 0)),
                    patience=int(stopping.get("patience", 0)), min_delta=float(stopping.get("min_delta", 0.0)))
        for name in ("batch_size", "accumulation_steps"):
            if getattr(knobs, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(knobs, name)}")
        if knobs.max_steps is not None and knobs.max_steps < 1:
            raise ValueError(f"train.max_steps must be at least 1 or null, got {knobs.max_steps}")
        if knobs.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be auto, fp32 or bf16, got {knobs.precision!r}")
        for name in ("loader_workers", "checkpoint_every_steps", "patience"):
            if getattr(knobs, name) < 0:
                raise ValueError(f"train.{name} must not be negative, got {getattr(knobs, name)}")
        return knobs

    def autocast(self, device: str):
        """bf16 autocast on CUDA by default (fp32 master weights); plain fp32 on CPU unless asked."""
        kind = device.split(":")[0]
        wanted = self.precision == "bf16" or (self.precision == "auto" and kind == "cuda")
        return torch.autocast(device_type=kind, dtype=torch.bfloat16) if wanted else nullcontext()


@dataclass
class FitResult:
    history: list[float] = field(default_factory=list)              # weighted training loss per epoch
    validation_history: list[float] = field(default_factory=list)   # weighted validation loss per epoch
    steps: int = 0
    best_epoch: int | None = None
    stopped_early: bool = False
    resumed_from_step: int | None = None


STEP_LOG_FILE = "curve.json"  # beside the step-N/ checkpoints: the step curve up to the newest of them


@dataclass
class StepLog:
    """Per optimizer step (numbered from 1): the weighted mean training loss of the step's global batch
    (under dropout, as the loop trains) and the learning rate of the first optimizer group."""
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)

    def record(self, step: int, loss: float, learning_rate: float) -> None:
        self.steps.append(step)
        self.loss.append(loss)
        self.learning_rate.append(learning_rate)

    def save(self, store: Checkpoints, world: World) -> None:
        """Written before the checkpoint it belongs to: a kill between the two leaves a curve that runs
        past the newest checkpoint, which `resume` cuts back."""
        if world.leader:
            write_json_atomic(store.folder / STEP_LOG_FILE, {"fingerprint": store.fingerprint, "steps": self.steps,
                                                             "loss": self.loss, "learning_rate": self.learning_rate})

    def resume(self, store: Checkpoints, step: int) -> None:
        """The curve up to `step`, the step the loop resumes after (none when it is from another run)."""
        path = store.folder / STEP_LOG_FILE
        saved = read_json(path) if path.is_file() else {}
        if saved.get("fingerprint") != store.fingerprint:
            return
        for record in zip(saved["steps"], saved["loss"], saved["learning_rate"]):
            if record[0] <= step:
                self.record(*record)


class _Gather:
    """DataLoader collate: the batch's rows with their text vectors gathered (no shared text table in
    the batch, so pinning and moving it copies only the batch)."""

    def __init__(self, x: Features):
        self.x = x

    def __call__(self, index: torch.Tensor) -> Features:
        return self.x.subset(index).gathered()


def _batches(order: torch.Tensor, batch_size: int, start: int, world: World) -> list[torch.Tensor]:
    """The epoch's global micro-batches (world.size x batch_size rows) from `start` on, each cut to this
    rank's share: disjoint across ranks, together the whole epoch (DistributedSampler without padding,
    so no row counts twice; the last batch's shares may be short)."""
    size = batch_size * world.size
    return [order[i:i + size][world.rank::world.size] for i in range(start * size, len(order), size)]


def _loader(x: Features, batches: list[torch.Tensor], knobs: LoopKnobs, device: str):
    if knobs.loader_workers == 0:
        return ((index, None) for index in batches)
    from torch.utils.data import DataLoader

    # Its own generator: the loader seeds its workers from it, and drawing from the global one would
    # move the dropout masks, so workers or not would train differently.
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=knobs.loader_workers,
                        collate_fn=_Gather(x), pin_memory=device.startswith("cuda"),
                        generator=torch.Generator().manual_seed(0))
    return zip(batches, loader)


def average_epochs(cfg: dict) -> float:
    """train.average_epochs, checked (the train stage's knob: the importance estimators' fits keep the
    last step's weights)."""
    value = cfg.get("average_epochs", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"train.average_epochs must be a number of epochs, 0 or more, got {value!r}")
    return float(value)


def average_decay(knobs: LoopKnobs, epochs: float, rows: int, world: World) -> float:
    """The per-step decay of the weights' moving average: its horizon is `epochs` epochs of steps."""
    batches = -(-rows // (knobs.batch_size * world.size))
    steps = max(1, -(-batches // knobs.accumulation_steps))
    return 1.0 - 1.0 / max(1.0, epochs * steps)


def update_average(average: dict, model: torch.nn.Module, decay: float, step: int) -> None:
    """average <- d * average + (1 - d) * weights, with d ramped up over the first steps, as
    (1 + step) / (10 + step), so the initial weights fade quickly. As a lerp, so weights that do not
    move leave the average exactly where it is."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key in average:
                average[key].lerp_(value.detach(), 1 - d)


def fit(model: torch.nn.Module, x: Features, weights: np.ndarray | None, cfg: dict, seed: int, device: str,
        epochs: int, *, loss_fn, validation: tuple[Features, np.ndarray | None] | None = None,
        checkpoint_dir: str | Path | None = None, fingerprint: str = "", progress=None,
        step_log: StepLog | None = None, average_epochs: float = 0.0) -> FitResult:
    """Train `model` in place (it ends in eval mode with the best validation epoch's weights when there
    is a validation slice). With `average_epochs` > 0 the weights validated and kept are an exponential
    moving average of every step's weights over about that many epochs: the last step's weights move
    with the last batches drawn, their average much less. `loss_fn(model, batch)` gives per-row losses.
    `step_log`, when given, gets every optimizer step's loss and learning rate (on every rank alike: the
    loss is the global batch's)."""
    knobs = LoopKnobs.from_params(cfg)
    world, device = start_distributed(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    on_device = x.to(device) if knobs.loader_workers == 0 else x
    w = (torch.ones(len(x)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)).to(device)
    # A model may ask for groups of its own (the ranker's tuned encoder layers take a smaller rate).
    groups = model.optimizer_groups(knobs.learning_rate) if hasattr(model, "optimizer_groups") else model.parameters()
    optimizer = torch.optim.AdamW(groups, lr=knobs.learning_rate, weight_decay=knobs.weight_decay)
    trained = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Every parameter takes part in every step (no find_unused_parameters); the buffers (calibration,
        # feature scaling) are fixed while training and built alike on every rank: no broadcasts.
        trained = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None,
                                          broadcast_buffers=False)
    # Every rank resumes from the same checkpoint (the ranks must agree on the step); rank 0 writes them.
    store = Checkpoints(checkpoint_dir, fingerprint) if checkpoint_dir else None
    state = LoopState()
    resumed = store.latest() if store is not None else None
    if resumed is not None:
        state = restore(resumed, model, optimizer, generator, world)
        if step_log is not None:
            step_log.resume(store, state.step)
    decay = average_decay(knobs, average_epochs, len(x), world) if average_epochs else None
    if decay is not None and state.average is None:  # the float weights (integer buffers are not averaged)
        state.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    result = FitResult(history=state.history, validation_history=state.validation_history,
                       resumed_from_step=state.step if resumed is not None else None)
    if progress is not None and state.step:
        progress.update(min(state.step * knobs.batch_size * knobs.accumulation_steps, len(x) * epochs))
    while state.epoch < epochs and not result.stopped_early:
        if state.order is None:
            state.order = torch.randperm(len(x), generator=generator)
            state.total = state.seen = 0.0
        batches = _batches(state.order, knobs.batch_size, state.next_batch, world)
        group: list = []
        for index, gathered in _loader(x, batches, knobs, device):
            group.append((index, gathered))
            state.next_batch += 1
            if len(group) < knobs.accumulation_steps and state.next_batch * knobs.batch_size * world.size < len(x):
                continue
            step_loss = _step(trained, on_device, w, group, knobs, device, world, optimizer, loss_fn, state)
            if decay is not None:
                update_average(state.average, model, decay, state.step)
            if step_log is not None:
                step_log.record(state.step, all_ranks_mean(*step_loss, world, device),
                                float(optimizer.param_groups[0]["lr"]))
            if progress is not None:
                progress.update(sum(len(i) for i, _ in group) * world.size)
            group = []
            if knobs.max_steps is not None and state.step >= knobs.max_steps:
                break
            if store is not None and knobs.checkpoint_every_steps and state.step % knobs.checkpoint_every_steps == 0:
                _checkpoint(store, state, model, optimizer, generator, world, step_log)
        state.history.append(all_ranks_mean(state.total, state.seen, world, device))
        state.epoch += 1
        state.order, state.next_batch = None, 0
        if validation is not None:
            live = _swap_in(model, state.average)
            loss = leaders(weighted_loss(model, validation[0], validation[1], device, loss_fn), world, device)
            state.validation_history.append(loss)
            model.train()
            if state.best_loss is None or loss < state.best_loss - knobs.min_delta:
                state.best_loss, state.best_epoch, state.bad_epochs = loss, state.epoch, 0
                state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state.bad_epochs += 1
                result.stopped_early = bool(knobs.patience) and state.bad_epochs >= knobs.patience
            if live is not None:
                model.load_state_dict(live)
        if knobs.max_steps is not None and state.step >= knobs.max_steps:
            break
        if store is not None and knobs.checkpoint_every_steps:
            # Epoch boundaries too: the validation state.
            _checkpoint(store, state, model, optimizer, generator, world, step_log)
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    elif state.average is not None:  # no validation: the average as it ends, nothing to swap back
        model.load_state_dict(state.average, strict=False)
    result.steps, result.best_epoch = state.step, state.best_epoch
    model.eval()
    return result


def _swap_in(model: torch.nn.Module, average: dict | None) -> dict | None:
    """Loads the averaged weights into `model`; returns the weights they replaced (None: no average)."""
    if average is None:
        return None
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(average, strict=False)
    return live


def _checkpoint(store: Checkpoints, state: LoopState, model, optimizer, generator: torch.Generator, world: World,
                step_log: StepLog | None) -> None:
    if step_log is not None:
        step_log.save(store, world)
    store.save(state, model, optimizer, generator, world)


def _step(trained, data: Features, w: torch.Tensor, group: list, knobs: LoopKnobs, device: str, world: World,
          optimizer, loss_fn, state: LoopState) -> tuple[float, float]:
    """One optimizer step over an accumulation group of micro-batches: the gradient of the group's
    weighted mean loss, however the rows are split into micro-batches and ranks. Returns this rank's
    weighted loss sum and weight sum of the step."""
    all_index = torch.cat([index for index, _ in group])
    group_w = w[all_index.to(w.device)]
    local_weight = float(group_w.sum())
    total_weight = local_weight
    if world.size > 1:
        import torch.distributed as dist

        summed = torch.tensor([local_weight], dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        total_weight = float(summed)
    denominator = max(total_weight, 1e-8) / world.size  # DDP averages over ranks: undo it
    optimizer.zero_grad(set_to_none=True)
    step_total = 0.0
    for k, (index, gathered) in enumerate(group):
        batch = gathered.to(device, non_blocking=True) if gathered is not None else data.subset(index.to(device))
        batch_w = w[index.to(w.device)]
        sync = world.size == 1 or k == len(group) - 1
        with (nullcontext() if sync else trained.no_sync()), knobs.autocast(device):
            loss = (loss_fn(trained, batch).float() * batch_w).sum() / denominator
        loss.backward()
        micro_total = float(loss.detach()) * denominator  # this rank's weighted loss sum
        state.total += micro_total
        step_total += micro_total
    optimizer.step()
    state.seen += local_weight
    state.step += 1
    return step_total, local_weight


@torch.no_grad()
def weighted_loss(model, x: Features, weights: np.ndarray | None, device: str, loss_fn,
                  batch_size: int = 8192) -> float:
    model.eval()
    w = torch.ones(len(x)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    total = 0.0
    for start in range(0, len(x), batch_size):
        index = torch.arange(start, min(start + batch_size, len(x)))
        total += float((loss_fn(model, x.subset(index).to(device)).float().cpu() * w[index]).sum())
    return total / max(float(w.sum()), 1e-8)
