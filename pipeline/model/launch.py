"""Run a stage's command as several processes under torchrun (one per GPU; gloo ranks on CPU).

compute.train_processes N > 1 turns `python -m pipeline train ...` into
`python -m torch.distributed.run --standalone --nproc-per-node N -m pipeline train ...`: the command
replaces itself with torchrun, which starts the ranks, and a rank that fails stops the others and
makes the command exit non-zero. With 1 nothing is launched: the stage runs in its own process.
"""
from __future__ import annotations

import os
import signal
import sys


def processes(params: dict) -> int:
    """compute.train_processes, checked: a whole number of at least 1."""
    value = (params.get("compute") or {}).get("train_processes", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"compute.train_processes must be a whole number of at least 1, got {value!r}")
    return value


def launched() -> bool:
    """Whether this process is one of torchrun's ranks (torchrun sets WORLD_SIZE for each)."""
    return "WORLD_SIZE" in os.environ


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command line that runs `python -m pipeline <argv>` as `nproc` ranks on this machine."""
    # --standalone: a rendezvous on a free local port, so two runs on one worker do not collide.
    # --max-restarts 0: a failed rank fails the command; retrying is the scheduler's job (Airflow),
    # and a retry resumes from the stage's checkpoints.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "pipeline", *argv]


def exec_torchrun(nproc: int, argv: list[str]) -> None:
    """Become torchrun (same process id), so a kill of the stage reaches the agent and, through it,
    every rank; nothing is left running behind a killed command."""
    command = torchrun_command(nproc, argv)
    print(f"launch: {nproc} processes: {' '.join(command[1:])}", flush=True)
    sys.stderr.flush()
    os.execv(command[0], command)


def exit_on_sigterm() -> None:
    """In a rank: turn torchrun's SIGTERM (sent when another rank failed) into SystemExit, so that
    temporary output folders are removed on the way out instead of left behind."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
