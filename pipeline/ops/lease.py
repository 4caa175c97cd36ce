"""The workspace lease: one run at a time works in a workspace, and waiting runs go in day order.

Every run shares the workspace's stage outputs (work/corpus, work/train, ...) and run/context.yaml,
so two runs interleaving their stages would read each other's files. A run first takes the lease
(the DAG's `acquire_workspace`, or `pipeline repro` itself when called by hand), every stage checks
that its run holds it, and the run gives it back at its end (`release_workspace`, a teardown that
runs on failure too). DVC's cache and run cache stay shared: a rerun is still a cache hit.

run/lease.json    {"holder", "day", "asked_at", "acquired_at", "waited_seconds", "prepared",
                   "waiting": {holder: {"day", "since", "seen_at"}}}
run/leases.jsonl  one line per lease given back: who held it, for which day, from when it asked and
                  when it held it to when

A waiting run asks again every poke; the lease goes to the earliest day among the runs that asked
recently (within `stale_after` seconds), so a backfill with several active runs still trains its
days in order, and a run that stopped asking no longer holds the queue up. When other runs are
active, a run takes a free lease only after a poke interval in the queue, so that runs started
together are all in it by then; a run alone in its workspace takes it at once (`settle_seconds`).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.atomic import dumps_json, pid_alive, write_bytes_atomic

LEASE = Path("run") / "lease.json"
HISTORY = Path("run") / "leases.jsonl"
GUARD = Path("run") / ".lease.lock"
CLI_PREFIX = "cli:"


class LeaseHeld(Exception):
    """The workspace's lease belongs to another run."""

    def __init__(self, lease: dict):
        self.lease = lease
        if lease.get("holder") is None:
            # On a worker that does not mount the shared workspace, the lease its run took is elsewhere.
            super().__init__("no run holds this workspace's lease: is it the workspace the run took (the "
                             "same shared folder on every worker)?")
        else:
            super().__init__(f"the workspace is leased to {lease['holder']!r} (day {lease['day']}, "
                             f"since {lease['acquired_at']})")


def now() -> float:
    return time.time()


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@contextmanager
def guarded(workspace: Path) -> Iterator[None]:
    """Serialise every read-modify-write of the lease file (an flock: released if the process dies)."""
    path = workspace / GUARD
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read(workspace: str | Path) -> dict | None:
    """The lease as it stands (None: free), with its waiting runs."""
    path = Path(workspace) / LEASE
    return json.loads(path.read_text()) if path.is_file() else None


def write(workspace: Path, lease: dict) -> None:
    write_bytes_atomic(workspace / LEASE, dumps_json(lease).encode())


def settle_seconds(other_active_runs: int | None, poke_seconds: float) -> float:
    """How long a run waits in the queue before it takes a free lease. Runs started together must
    all be queued before the earliest day can be picked; a run with no other active run (`0`) has
    nobody to wait for. None (unknown) waits, as a crowd would."""
    return 0.0 if other_active_runs == 0 else float(poke_seconds)


def acquire(workspace: str | Path, holder: str, day: str, stale_after: float, queue: bool = True,
            settle: float = 0.0) -> str | None:
    """Take the lease for `holder`, or (with `queue`) put it in the queue. None when it holds the lease
    now (it may have held it already: a retried task asks again), else why it waits."""
    workspace = Path(workspace)
    with guarded(workspace):
        lease = read(workspace) or {"holder": None, "waiting": {}}
        if lease["holder"] == holder:
            return None
        if lease["holder"] is not None and dead_command(lease["holder"]):
            lease = given_back(workspace, lease, forced=True)
        t = now()
        waiting = {h: w for h, w in lease.get("waiting", {}).items()
                   if t - w["seen_at"] <= stale_after and h != lease["holder"]}
        since = waiting.get(holder, {}).get("since", t)
        waiting[holder] = {"day": day, "since": since, "seen_at": t}
        first = min(waiting.items(), key=lambda item: (item[1]["day"], item[1]["since"]))[0]
        # A queued run waits `settle` seconds before it takes a free lease: runs started together (a
        # backfill's) all get in the queue first, so the earliest day goes first.
        settled = not queue or t - since >= settle
        if lease["holder"] is None and first == holder and settled:
            del waiting[holder]
            write(workspace, {"holder": holder, "day": day, "asked_at": stamp(since), "acquired_at": stamp(t),
                              "waited_seconds": round(t - since, 3), "waiting": waiting})
            return None
        if not queue:
            del waiting[holder]
        write(workspace, {**lease, "waiting": waiting})
        if lease["holder"] is None and first == holder:
            return f"first in the queue, taking the lease after {settle:.0f} s in it"
        if lease["holder"] is not None:
            return f"leased to {lease['holder']!r} (day {lease['day']}, since {lease['acquired_at']})"
        return f"{first!r} waits for an earlier day ({waiting[first]['day']})"


def release(workspace: str | Path, holder: str | None = None, taken_over: bool = False) -> dict | None:
    """Give the lease back. With a holder, only that holder's lease is given back (a teardown of a
    run that never got it must not free another run's); without one, whoever holds it loses it.
    `taken_over`: someone else gives it back for a holder that ended without doing so (logged forced)."""
    workspace = Path(workspace)
    with guarded(workspace):
        lease = read(workspace)
        if not lease or lease["holder"] is None or (holder is not None and lease["holder"] != holder):
            return None
        return given_back(workspace, lease, forced=holder is None or taken_over)["released"]


def given_back(workspace: Path, lease: dict, forced: bool) -> dict:
    """Free the lease and log who held it (the caller holds the guard)."""
    record = {"holder": lease["holder"], "day": lease["day"], "asked_at": lease.get("asked_at"),
              "acquired_at": lease["acquired_at"], "waited_seconds": lease.get("waited_seconds"),
              "released_at": stamp(now()), "forced": forced}
    with open(workspace / HISTORY, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    freed = {"holder": None, "waiting": lease.get("waiting", {})}
    write(workspace, freed)
    return {**freed, "released": record}


def command_holder() -> str:
    """The holder name of a `pipeline repro` run by hand: this host and process."""
    return f"{CLI_PREFIX}{socket.gethostname()}:{os.getpid()}"


def dead_command(holder: str) -> bool:
    """A by-hand holder on this host whose process is gone (killed before it gave the lease back)."""
    if not holder.startswith(CLI_PREFIX):
        return False
    host, _, pid = holder[len(CLI_PREFIX):].rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def mark_prepared(workspace: str | Path, holder: str) -> None:
    """Note that the holder's run context is written.

    A run's context (its day, drift window, baseline champion, estimator) is taken once, before its
    first stage: a selection or a promotion landing mid-run must not change its later stages."""
    workspace = Path(workspace)
    with guarded(workspace):
        lease = read(workspace)
        if not lease or lease["holder"] != holder:
            raise LeaseHeld(lease or {"holder": None, "day": None, "acquired_at": None})
        write(workspace, {**lease, "prepared": True})


def check(workspace: str | Path, holder: str) -> dict:
    """The lease, when `holder` holds it; else LeaseHeld: a stage must not run in another run's files."""
    lease = read(workspace)
    if not lease or lease["holder"] != holder:
        raise LeaseHeld(lease or {"holder": None, "day": None, "acquired_at": None})
    return lease


def stale_after(params: dict) -> float:
    """Seconds after its last ask that a waiting run stops holding the queue up."""
    return float(params["dag"]["lease"]["stale_after_seconds"])


def history(workspace: str | Path) -> list[dict]:
    path = Path(workspace) / HISTORY
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository whose lease to show or break")
    parser.add_argument("--break", dest="break_lease", action="store_true",
                        help="take the lease from whoever holds it (a run that died without giving it back)")


def main(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace)
    if args.break_lease:
        record = release(workspace)
        print(f"lease: broke {record['holder']!r}'s lease (day {record['day']})" if record
              else "lease: the workspace was not leased")
        return 0
    lease = read(workspace)
    print(dumps_json(lease or {"holder": None}), end="")
    return 0
