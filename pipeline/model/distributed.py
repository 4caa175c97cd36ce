"""DistributedDataParallel plumbing for the training loop: the world of ranks torchrun starts (a world
of one without it), and the few values the ranks must agree on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class World:
    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


def start_distributed(device: str) -> tuple[World, str]:
    """Join torchrun's process group when launched by it; else a world of one. Returns the device to use."""
    if "WORLD_SIZE" not in os.environ:
        return World(), device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {local_rank} has no GPU: {os.environ['WORLD_SIZE']} processes on a machine "
                               f"with {torch.cuda.device_count()} (compute.train_processes: at most one per GPU)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return World(dist.get_rank(), dist.get_world_size()), device


def stop_distributed() -> None:
    """Leave the process group once every rank got here: a rank that failed before never arrives, and
    torchrun then stops the others while they wait, so no rank goes on to write outputs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_ranks_mean(total: float, seen: float, world: World, device: str) -> float:
    """The epoch's weighted loss over every rank's rows (each rank summed only its own)."""
    if world.size > 1:
        import torch.distributed as dist

        sums = torch.tensor([total, seen], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, seen = (float(v) for v in sums)
    return total / max(seen, 1e-8)


def leaders(value: float, world: World, device: str) -> float:
    """Rank 0's value on every rank: early stopping must stop all ranks at the same epoch, even where
    a GPU's rounding differs between ranks."""
    if world.size > 1:
        import torch.distributed as dist

        shared = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(shared, src=0)
        value = float(shared)
    return value


def rank_states(world: World, state) -> list[tuple]:
    """Every rank's (CPU random state, CUDA random state, epoch loss sum, weight sum) for rank 0's
    checkpoint: each rank draws its own dropout masks and sums its own rows, and a resumed run must go
    on with exactly those."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    mine = (torch.get_rng_state(), cuda, state.total, state.seen)
    if world.size == 1:
        return [mine]
    import torch.distributed as dist

    states: list = [None] * world.size
    dist.all_gather_object(states, mine)  # between this run's own ranks, in memory
    return states
