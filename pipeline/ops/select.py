"""select command: the weekly benchmark, run through DVC, and its winner made the retrain's estimator.

`python -m pipeline select --workspace WS --until DAY [--estimators ...] [--holder RUN_ID]`
  1. holds the workspace's lease (pipeline/ops/lease.py) for its own duration and exits 4 when another
     run holds it, as `repro` by hand does; the weekly DAG takes the lease in its first task and passes
     its run id as --holder;
  2. writes the week into weekly/context.yaml: DAY, the benchmark.days most recent days up to it, the
     estimators, and the content hash of every raw day the benchmark reads (those days and the
     ranker.history.days before them, whose rows its history features read);
  3. runs weekly/dvc.yaml's benchmark stage with `dvc repro`: report.html, benchmark.json and the
     verdict selection.json in work/benchmark/until=DAY/, recorded in weekly/dvc.lock; a week whose
     days, params and code are unchanged is a DVC cache hit and does not rerun;
  4. when the verdict names an estimator, writes it to selection/estimator.json, what the retrain reads
     (pipeline/importance/selection.py); when it names none, that file stays as it was and the log
     says why;
  5. commits the week to the workspace's git repository, tagged sieve/week/DAY (pipeline/release/runs.py).
`python -m pipeline publish --workspace WS --week DAY` then pushes the week to the remotes
(pipeline/release/publish.py); the DAG does so in its next task.

Why the stage writes a verdict and select applies it, rather than the stage writing
selection/estimator.json itself: "keep the previous selection when none won" depends on what was
selected before, which is not an input of the benchmark. The stage's outputs stay a function of its
declared deps (days, params, code), so DVC's cache and run cache can be trusted, and applying the
verdict is a decision made after the stage, as promote switches the champion after the gate.

A workspace from before the weekly stage tracked selection/estimator.json with `dvc add`: its .dvc file
is removed on the first select (the file stays, and git tracks it from then on).

Exit codes: 0 done; 1 the stage failed or the week was not committed; 2 bad arguments or not a
workspace; 4 another run holds the workspace's lease.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.atomic import dumps_json, read_json
from pipeline.data.contract import ContractError
from pipeline.days import parse_day
from pipeline.importance import selection
from pipeline.ops import lease
from pipeline.ops.repro import write_if_changed
from pipeline.params import load_params
from pipeline.release import history, runs
from pipeline.runplan import EXIT_LEASE_HELD, context_yaml, dvc_env, shard_count

RAW = Path("data") / "raw"
# A raw day's folders the benchmark reads: the log, the catalog, and the simulator's truth when there is one.
RAW_PARTS = ("impressions", "catalog", "_truth")
CONTEXT_HEADER = ("# The weekly benchmark's context (weekly/dvc.yaml reads it), written by\n"
                  "# `python -m pipeline select --until DAY`: the week, and the content hash of\n"
                  "# every raw day it reads.\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository the retrain runs in")
    parser.add_argument("--until", required=True, help="YYYY-MM-DD: the last day the benchmark may use")
    parser.add_argument("--estimators", default=None, help="all or NAME,NAME,... (default: benchmark.estimators)")
    parser.add_argument("--holder", default=None,
                        help="the run that holds the workspace's lease (the DAG passes its run id); "
                             "without it the command takes the lease itself for its own duration")


def recent_days(data_dir: Path, until: str, count: int) -> list[str]:
    from pipeline.model.dataset import days_in

    days = [day for day in days_in(data_dir) if day <= until][-count:]
    if not days:
        raise ValueError(f"{data_dir}: no day on or before {until} to benchmark")
    return days


def history_days(data_dir: Path, days: list[str], params: dict) -> list[str]:
    """The earlier days whose rows the benchmark's history features read (pipeline/model/dataset.py
    earlier_rows: ranker.history.days of them before the first day benchmarked)."""
    from pipeline.model.dataset import days_in

    wanted = int((params["ranker"].get("history") or {}).get("days", 0))
    return [day for day in days_in(data_dir) if day < days[0]][-wanted:] if wanted > 0 else []


def day_fingerprint(data_dir: Path, day: str) -> str:
    """Content hash of a raw day's files: changes exactly when the day is rewritten."""
    digest = hashlib.sha256()
    for part in RAW_PARTS:
        folder = data_dir / part / f"dt={day}"
        for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else ():
            digest.update(path.relative_to(data_dir).as_posix().encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def week_context(until: str, days: list[str], estimators: str, raw: dict[str, str]) -> str:
    week = {"until": until, "days": days, "day_args": " ".join(f"--day {day}" for day in days),
            "estimators": estimators, "raw": raw}
    return CONTEXT_HEADER + yaml.safe_dump({"weeks": {selection.WEEK_KEY: week}}, sort_keys=False)


def checked_estimators(text) -> str:
    """The estimators the stage's command line names, checked now for a clear error before any run."""
    from pipeline.importance.benchmark.run import estimator_names

    text = str(text).strip()
    estimator_names(text)
    return text


def forget_added_selection(workspace: Path) -> None:
    """Before the weekly stage, `select` tracked selection/estimator.json with `dvc add`; git tracks it now.
    Remove its .dvc file (and DVC's .gitignore entry for it), keeping the selection."""
    added = workspace / f"{selection.SELECTION_FILE}.dvc"
    if not added.is_file():
        return
    if not (workspace / selection.SELECTION_FILE).is_file():  # in DVC's cache only: put it back first
        dvc(workspace, "checkout", str(added.relative_to(workspace)))
    dvc(workspace, "remove", str(added.relative_to(workspace)))
    print(f"select: {selection.SELECTION_FILE} is no longer tracked with dvc add; git keeps it from now on")


def dvc(workspace: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", *args], cwd=workspace, env=dvc_env(),
                            capture_output=True, text=True)
    if result.returncode:
        said = " ".join((result.stderr or result.stdout).split())[:300]
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {result.returncode}): {said}")


def apply_verdict(workspace: Path, until: str) -> None:
    """Make the verdict's winner the selection; with no winner, leave the selection as it was."""
    verdict = read_json(workspace / selection.benchmark_dir(until) / selection.VERDICT_FILE)
    if verdict.get("estimator") is None:
        print(f"select: no estimator chosen, {selection.SELECTION_FILE} stays as it was: {verdict.get('reason')}")
        return
    write_if_changed(workspace / selection.SELECTION_FILE, dumps_json(verdict))
    days = ", ".join((verdict.get("benchmark") or {}).get("days") or [])
    print(f"select: {selection.SELECTION_FILE} names {verdict['estimator']} (benchmark of {days}): {verdict['reason']}")


def ensure_run_context(workspace: Path, until: str, params: dict) -> None:
    """Most dvc commands (`dvc status`, say) read the retrain's dvc.yaml too, whose vars come from the
    retrain's run context; before the first retrain there is none, so the week's commit carries this one.
    An existing one is left alone: it is the last retrain's, which dvc.lock records."""
    context = workspace / "run" / "context.yaml"
    if not context.is_file():
        context.parent.mkdir(parents=True, exist_ok=True)
        context.write_text(context_yaml(until, shard_count(params)), encoding="utf-8")


def run_stage(workspace: Path) -> int:
    """`dvc repro` of the weekly stage alone; DVC's output goes to the log."""
    stage = f"{selection.WEEKLY_PIPELINE.as_posix()}:{selection.WEEKLY_STAGE}"
    result = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage],
                            cwd=workspace, env=dvc_env())
    if result.returncode:
        print(f"select: the benchmark stage failed (dvc exit {result.returncode})", file=sys.stderr)
    return result.returncode


def record_week(workspace: Path, until: str, run_id: str) -> int:
    try:
        sha = runs.commit_selection(workspace, until, run_id)
    except (runs.CommitError, ValueError, OSError) as exc:
        print(f"select: the week ran through but was not committed: {exc}", file=sys.stderr)
        return 1
    if sha:
        print(f"select: the week up to {until} committed as {sha[:12]}, tagged {history.week_tag(until)}")
    return 0


def run_week(workspace: Path, until: str, days: list[str], estimators: str, params: dict, run_id: str) -> int:
    """Steps 2 to 5 of the module docstring, under the lease."""
    data_dir = workspace / RAW
    raw = {day: day_fingerprint(data_dir, day) for day in [*history_days(data_dir, days, params), *days]}
    write_if_changed(workspace / selection.WEEKLY_CONTEXT, week_context(until, days, estimators, raw))
    ensure_run_context(workspace, until, params)
    try:
        forget_added_selection(workspace)
    except RuntimeError as exc:
        print(f"select: {exc}", file=sys.stderr)
        return 1
    if run_stage(workspace):
        return 1
    apply_verdict(workspace, until)
    return record_week(workspace, until, run_id)


def run(workspace: str | Path, until: str, estimators: str | None = None, holder: str | None = None) -> int:
    workspace = Path(workspace).resolve()
    if not (workspace / ".dvc").is_dir() or not (workspace / selection.WEEKLY_PIPELINE).is_file():
        print(f"select: {workspace} is not a DVC workspace with {selection.WEEKLY_PIPELINE} "
              f"(python -m pipeline init --force DIR refreshes an older one)", file=sys.stderr)
        return 2
    try:
        until = parse_day(until)
        params = load_params(workspace / "params.yaml")
        days = recent_days(workspace / RAW, until, int(params["benchmark"]["days"]))
        estimators = checked_estimators(estimators or params["benchmark"]["estimators"])
    except (ValueError, ContractError) as exc:  # ContractError: no impressions/dt=DAY folder at all
        print(f"select: {exc}", file=sys.stderr)
        return 2
    if holder is not None:
        try:
            lease.check(workspace, holder)
        except lease.LeaseHeld as exc:
            print(f"select: {holder!r} does not hold the workspace: {exc}", file=sys.stderr)
            return EXIT_LEASE_HELD
        return run_week(workspace, until, days, estimators, params, holder)
    # By hand: hold the lease for this command only, and refuse to run inside another run.
    holder = lease.command_holder()
    waits = lease.acquire(workspace, holder, until, stale_after=lease.stale_after(params), queue=False)
    if waits is not None:
        print(f"select: the workspace is busy: {waits}; try again when that run has ended "
              f"(`python -m pipeline lease --workspace {workspace}` shows the lease)", file=sys.stderr)
        return EXIT_LEASE_HELD
    try:
        return run_week(workspace, until, days, estimators, params, runs.BY_HAND)
    finally:
        lease.release(workspace, holder)


def main(args: argparse.Namespace) -> int:
    return run(args.workspace, args.until, args.estimators, args.holder)
