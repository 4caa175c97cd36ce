"""Checkpoints of the training loop: its resumable state, written whole or not at all, so a killed run
resumes to the same final weights.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.atomic import atomic_dir
from pipeline.model.distributed import World, rank_states

CHECKPOINT_PREFIX = "step-"


@dataclass
class LoopState:
    epoch: int = 0
    next_batch: int = 0       # micro-batches of this epoch already done
    step: int = 0             # optimizer steps in all
    order: torch.Tensor | None = None
    total: float = 0.0        # this epoch's weighted loss sum and weight sum so far
    seen: float = 0.0
    history: list[float] = field(default_factory=list)
    validation_history: list[float] = field(default_factory=list)
    best_loss: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_state: dict | None = None
    average: dict | None = None   # the moving average of the weights (train.average_epochs)


class Checkpoints:
    """step-<n>/ folders (state.safetensors + state.json), written whole or not at all; the newest one
    whose fingerprint matches the run is resumed. Nothing is unpickled."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint

    def save(self, state: LoopState, model, optimizer, generator: torch.Generator, world: World = World()) -> None:
        """Called on every rank at the same step (the random states are gathered); rank 0 writes."""
        ranks = rank_states(world, state)
        if not world.leader:
            return
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if state.best_state is not None:
            tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in state.best_state.items()})
        if state.average is not None:
            tensors.update({f"average.{k}": v.detach().cpu().contiguous() for k, v in state.average.items()})
        optim = optimizer.state_dict()
        for slot, values in optim["state"].items():
            for name, value in values.items():
                tensors[f"optim.{slot}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        for rank, (cpu, cuda, _, _) in enumerate(ranks):
            suffix = f".{rank}" if rank else ""  # rank 0's under the names one process always used
            tensors[f"rng.torch{suffix}"] = cpu
            if cuda is not None:
                tensors[f"rng.cuda{suffix}"] = cuda
        tensors["rng.order"] = generator.get_state()
        if state.order is not None:
            tensors["order"] = state.order
        meta = {"fingerprint": self.fingerprint, "epoch": state.epoch, "next_batch": state.next_batch,
                "step": state.step, "total": state.total, "seen": state.seen, "history": state.history,
                "validation_history": state.validation_history, "best_loss": state.best_loss,
                "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
                "param_groups": optim["param_groups"]}
        if world.size > 1:
            meta["ranks"] = [{"total": total, "seen": seen} for _, _, total, seen in ranks]
        with atomic_dir(self.folder / f"{CHECKPOINT_PREFIX}{state.step:09d}") as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_text(json.dumps(meta))
        for old in self._all()[:-1]:
            shutil.rmtree(old, ignore_errors=True)

    def _all(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))

    def latest(self) -> tuple[dict, dict] | None:
        for path in reversed(self._all()):
            meta = json.loads((path / "state.json").read_text())
            if meta.get("fingerprint") != self.fingerprint:
                print(f"training: {path} is from another run (other data or params): starting over")
                return None
            return meta, load_file(str(path / "state.safetensors"))
        return None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def restore(saved: tuple[dict, dict], model, optimizer, generator: torch.Generator,
             world: World = World()) -> LoopState:
    meta, tensors = saved
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    device = next(iter(model.state_dict().values())).device
    average = {k[len("average."):]: v.to(device) for k, v in tensors.items() if k.startswith("average.")}
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, slot, name = key.split(".", 2)
            slots.setdefault(int(slot), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    suffix = f".{world.rank}" if world.rank else ""
    torch.set_rng_state(tensors[f"rng.torch{suffix}"])
    if f"rng.cuda{suffix}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"])
    generator.set_state(tensors["rng.order"])
    if world.leader:
        print(f"training: resumed from step {meta['step']} (epoch {meta['epoch'] + 1}, batch {meta['next_batch']})")
    sums = meta["ranks"][world.rank] if "ranks" in meta else meta
    return LoopState(epoch=meta["epoch"], next_batch=meta["next_batch"], step=meta["step"],
                      order=tensors.get("order"), total=sums["total"], seen=sums["seen"],
                      history=list(meta["history"]), validation_history=list(meta["validation_history"]),
                      best_loss=meta["best_loss"], best_epoch=meta["best_epoch"], bad_epochs=meta["bad_epochs"],
                      best_state=best or None, average=average or None)
