"""Run the retrain's DVC stages for one day: the command every Airflow task calls.

Before `dvc repro` it writes the run's context into the workspace:
  run/context.yaml   the day, the training window's days and the importance shards, which dvc.yaml
                     interpolates into paths and commands (its per-day stages loop over the window)
  run/train_window.json  the training window: its days, their content hashes, the days left out and why
                     (pipeline/data/window.py)
  run/window.json    the earlier days (and their content hashes) that drift is measured against
  run/baseline.json  the champion that served before that day (what evaluate and gate compare with)
  run/estimator.json, run/weight_transform.json  the importance estimator and weight transform
                     (the benchmark's selection or params: pipeline/importance/selection.py)
Each is rewritten only when their content changes, so an unchanged rerun is a DVC cache hit.

A day the data contract rejects is committed to the workspace's git repository with its report and
tagged sieve/rejected/DAY; by hand, a run that goes through promote is committed and tagged
sieve/day/DAY (the DAG's `commit` task does that for its runs): pipeline/release/runs.py.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.atomic import dumps_json, write_bytes_atomic
from pipeline.days import parse_day
from pipeline.importance import selection
from pipeline.ops import lease
from pipeline.params import load_params
from pipeline.release import champions, history, runs
from pipeline.runplan import (
    EXIT_DATA_REJECTED,
    EXIT_LEASE_HELD,
    IMPORTANCE_DIR,
    REGISTRY_STAGES,
    REJECTION_PREFIX,
    SHARD_STAGE,
    SHARD_TARGET,
    SHARDS_DIR,
    STAGES,
    context_yaml,
    dvc_env,
    dvc_targets,
    missing_inputs,
    read_context,
    shard_count,
    shard_dir,
    validate_dir,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository to run in")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD: the run's data interval")
    parser.add_argument("stages", nargs="*", metavar="stage",
                        help=f"stages to run, in order (default: all of {', '.join(STAGES)}); "
                             f"{SHARD_STAGE}@K runs shard K only")
    parser.add_argument("--holder", default=None,
                        help="the run that holds the workspace's lease (the DAG passes its run id); "
                             "without it the command takes the lease itself for its own duration")


def prune_stale_outputs(workspace: Path, count: int, window: list[str]) -> None:
    """Per-day importance outputs of days outside the window, and shard folders of another shard count
    (DVC keeps both in its cache, and restores them when a backfill needs them again), would sit in the
    folders the combine and train stages read: remove them so those hold this run's outputs only."""
    shards = {shard_dir(day, k, count) for day in window for k in range(count)}
    keep = shards | {p.parent for p in shards} | {IMPORTANCE_DIR / f"dt={day}" for day in window}
    for folder in (SHARDS_DIR, IMPORTANCE_DIR, *{p.parent for p in shards}):
        for path in sorted((workspace / folder).iterdir()) if (workspace / folder).is_dir() else ():
            if path.relative_to(workspace) not in keep and not path.name.startswith("."):  # .gitignore stays
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def write_if_changed(path: Path, content: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != content:
        write_bytes_atomic(path, content.encode("utf-8"))


def prepare(workspace: Path, day: str, params: dict) -> None:
    from pipeline.data import drift  # pandas: not at import time, the DAG file imports this module
    from pipeline.data import window as training_window

    count = shard_count(params)
    train_window = training_window.manifest(workspace / "data" / "raw", workspace / "work" / "validate", day,
                                            training_window.window_days(params))
    write_if_changed(workspace / "run" / "train_window.json", dumps_json(train_window))
    write_if_changed(workspace / "run" / "context.yaml", context_yaml(day, count, train_window["days"]))
    prune_stale_outputs(workspace, count, train_window["days"])
    print(f"repro: {training_window.describe(train_window)}", file=sys.stderr)
    window = int((params["validate"].get("drift") or {}).get("window_days", 0))
    write_if_changed(workspace / "run" / "window.json",
                     dumps_json(drift.window_manifest(workspace / "data" / "raw", day, window)))
    registry_dir = workspace / params["registry"]["dir"]
    write_if_changed(workspace / "run" / "baseline.json",
                     dumps_json({"champion": champions.baseline_for(registry_dir, day)}))
    for path, content in selection.run_files(selection.resolve(workspace, params)).items():
        write_if_changed(workspace / path, dumps_json(content))


def rejection_message(workspace: Path, day: str) -> str | None:
    """The validate stage's own verdict when it rejected the day, else None (a crash, say)."""
    from pipeline.data.window import validation_summary  # pyarrow: not at import time (the DAG file)

    verdict = validation_summary(validate_dir(workspace, day).parent, day)
    if verdict and not verdict.get("success", True):
        reasons = verdict.get("failures") or [verdict.get("error") or "the day broke the data contract"]
        return "; ".join(reasons)
    return None


def record_rejection(workspace: Path, day: str, run_id: str, reason: str) -> None:
    """Commit the rejected day with its data-quality report (reviewers read rejected days too)."""
    try:
        sha = runs.commit_rejected(workspace, day, run_id, validate_dir(workspace, day), reason)
    except (runs.CommitError, ValueError, OSError) as exc:
        print(f"repro: the rejected day was not committed: {exc}", file=sys.stderr)
        return
    if sha:
        print(f"repro: {day} committed as {sha[:12]}, tagged {history.rejected_tag(day)}", file=sys.stderr)


def record_run(workspace: Path, day: str, run_id: str) -> int:
    try:
        sha = runs.commit_complete(workspace, day, run_id)
    except (runs.CommitError, ValueError, OSError) as exc:
        print(f"repro: the run ran through but was not committed: {exc}", file=sys.stderr)
        return 1
    if sha:
        print(f"repro: {day} committed as {sha[:12]}, tagged {history.day_tag(day)}")
    return 0


def run_stage(workspace: Path, stage: str, day: str, run_id: str = runs.BY_HAND) -> int:
    if stage == "validate" and (missing := missing_inputs(workspace, day)):
        # Not a rejection: the day may still land, so the caller may retry.
        print(f"repro: no data for {day} yet: {', '.join(missing)} missing", file=sys.stderr)
        return 1
    if stage == "validate":
        # A stale verdict must not be mistaken for today's.
        (validate_dir(workspace, day) / "summary.json").unlink(missing_ok=True)
    # --wait-for-lock: the shard stages of one run go side by side and take turns at DVC's lock.
    targets = dvc_targets(stage, read_context(workspace).get("window") or [day])
    # DVC's run cache gives back a stage's outputs, not what it did outside them: a promotion restored
    # from another run (a workspace sharing the cache, a registry changed since) would never switch this
    # registry's champion. promote always runs; it is idempotent.
    no_run_cache = ["--no-run-cache"] if stage in REGISTRY_STAGES else []
    result = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", *no_run_cache,
                             *targets], cwd=workspace, env=dvc_env())
    if result.returncode == 0:
        return 0
    if stage == "validate" and (message := rejection_message(workspace, day)) is not None:
        record_rejection(workspace, day, run_id, message)
        print(f"{REJECTION_PREFIX} {message}", file=sys.stderr)
        return EXIT_DATA_REJECTED
    print(f"repro: stage {stage} failed (dvc exit {result.returncode})", file=sys.stderr)
    return 1


def run(workspace: str | Path, day: str, stages: list[str] | tuple[str, ...] = STAGES,
        holder: str | None = None) -> int:
    workspace = Path(workspace).resolve()
    if not (workspace / ".dvc").is_dir() or not (workspace / "dvc.yaml").is_file():
        print(f"repro: {workspace} is not a DVC repository with a dvc.yaml", file=sys.stderr)
        return 2
    unknown = [stage for stage in stages if stage not in STAGES and not SHARD_TARGET.match(stage)]
    if unknown:
        print(f"repro: unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGES)} "
              f"({SHARD_STAGE}@K for one shard)", file=sys.stderr)
        return 2
    try:
        day = parse_day(day)
        params = load_params(workspace / "params.yaml")
        count = shard_count(params)
        beyond = [s for s in stages if (m := SHARD_TARGET.match(s)) and int(m.group(1)) >= count]
        if beyond:
            raise ValueError(f"{', '.join(beyond)}: importance.shards is {count}, so the shards are "
                             f"{SHARD_STAGE}@0 to {SHARD_STAGE}@{count - 1}")
    except ValueError as exc:
        print(f"repro: {exc}", file=sys.stderr)
        return 2
    if holder is not None:
        try:
            held = lease.check(workspace, holder)
        except lease.LeaseHeld as exc:
            print(f"repro: {holder!r} does not hold the workspace: {exc}", file=sys.stderr)
            return EXIT_LEASE_HELD
        if not held.get("prepared"):
            prepare(workspace, day, params)
            lease.mark_prepared(workspace, holder)
        return run_stages(workspace, day, stages, holder)
    # By hand: hold the lease for this command only, and refuse to run inside another run.
    holder = lease.command_holder()
    waits = lease.acquire(workspace, holder, day, stale_after=lease.stale_after(params), queue=False)
    if waits is not None:
        print(f"repro: the workspace is busy: {waits}; try again when that run has ended "
              f"(`python -m pipeline lease --workspace {workspace}` shows the lease)", file=sys.stderr)
        return EXIT_LEASE_HELD
    try:
        prepare(workspace, day, params)
        code = run_stages(workspace, day, stages, runs.BY_HAND)
        # By hand, a run that went through promote is committed here (the DAG has a task for it).
        if code == 0 and "promote" in (stages or STAGES):
            code = record_run(workspace, day, runs.BY_HAND)
        return code
    finally:
        lease.release(workspace, holder)


def run_stages(workspace: Path, day: str, stages, run_id: str) -> int:
    for stage in stages or STAGES:
        code = run_stage(workspace, stage, day, run_id)
        if code:
            return code
    return 0


def main(args: argparse.Namespace) -> int:
    return run(args.workspace, args.day, args.stages, args.holder)
