"""select command: benchmark the recent days and make the winner the retrain's estimator.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipeline.atomic import read_json, write_json_atomic
from pipeline.importance.selection import SELECTION_FILE
from pipeline.params import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository the retrain runs in")
    parser.add_argument("--until", required=True, help="YYYY-MM-DD: the last day the benchmark may use")
    parser.add_argument("--estimators", default=None, help="all or NAME,NAME,... (default: benchmark.estimators)")


def recent_days(data_dir: Path, until: str, count: int) -> list[str]:
    from pipeline.model.dataset import days_in

    days = [day for day in days_in(data_dir) if day <= until][-count:]
    if not days:
        raise ValueError(f"{data_dir}: no day on or before {until} to benchmark")
    return days


def run(workspace: str | Path, until: str, estimators: str | None = None) -> dict:
    from pipeline.importance.benchmark import run as benchmark

    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    days = recent_days(workspace / "data" / "raw", until, int(params["benchmark"]["days"]))
    out = workspace / "work" / "benchmark" / f"until={until}"
    result = benchmark.run(workspace / "data" / "raw", days, None, None, estimators, out, params)
    if result["selection"]["estimator"] is None:
        print(f"select: no estimator chosen, {SELECTION_FILE} stays as it was: {result['selection']['reason']}")
        return result
    write_json_atomic(workspace / SELECTION_FILE, read_json(out / benchmark.SELECTION_FILE))
    context = workspace / "run" / "context.yaml"
    if not context.is_file():
        # Every dvc command reads dvc.yaml, whose vars come from the retrain's run context; before the
        # first retrain there is none. An existing one is left alone: a retrain may be using it.
        from pipeline.runplan import context_yaml, shard_count

        context.parent.mkdir(parents=True, exist_ok=True)
        context.write_text(context_yaml(until, shard_count(params)), encoding="utf-8")
    tracked = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "add", str(SELECTION_FILE)],
                             cwd=workspace, capture_output=True, text=True)
    if tracked.returncode:
        raise RuntimeError(f"dvc add {SELECTION_FILE} failed: {tracked.stderr.strip()}")
    print(f"select: {SELECTION_FILE} now names {result['selection']['estimator']} (benchmark of {', '.join(days)}, "
          f"by the recovery on {result['primary_metric']})")
    return result


def main(args: argparse.Namespace) -> int:
    from pipeline.days import parse_day

    try:
        run(args.workspace, parse_day(args.until), args.estimators)
    except ValueError as exc:
        print(f"select: {exc}", file=sys.stderr)
        return 2
    return 0
