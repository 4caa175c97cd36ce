"""The estimator the retrain uses: the weekly benchmark's selection, or params when there is none.

`python -m pipeline select --workspace WS --until DAY` benchmarks the workspace's most recent days up
to DAY (benchmark.days of them), writes the benchmark's outputs to work/benchmark/until=DAY and, when
an estimator won, puts its selection in selection/estimator.json and tracks that file with `dvc add`.
The benchmark picks by the recovery on benchmark.metric: NDCG@10 against the true relevance on a
simulated log, the click AUC on a log without truth. Before each retrain, repro resolves the choice
into run/estimator.json and run/weight_transform.json (dependencies of the importance stages), so a new
selection rescores the next day and an unchanged one is a DVC cache hit.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipeline.atomic import read_json, write_json_atomic
from pipeline.params import load_params

SELECTION_FILE = Path("selection") / "estimator.json"
# What repro resolves the choice into before a retrain: the estimator (the scoring shards' input) and the
# weight transform (the combine's), apart, so a new transform reruns the combine only.
RUN_FILE = Path("run") / "estimator.json"
RUN_TRANSFORM_FILE = Path("run") / "weight_transform.json"
# The knobs of params' importance section that turn scores into weights: what a selection carries.
TRANSFORM_KEYS = ("temperature", "clip", "balance_by", "normalise", "drop_lowest_percent", "drop_sessions_percent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository the retrain runs in")
    parser.add_argument("--until", required=True, help="YYYY-MM-DD: the last day the benchmark may use")
    parser.add_argument("--estimators", default=None, help="all or NAME,NAME,... (default: benchmark.estimators)")


def transform_of(params: dict) -> dict:
    return {key: params["importance"].get(key) for key in TRANSFORM_KEYS}


def resolve(workspace: str | Path, params: dict) -> dict:
    """{estimator, transform, source, ...}: the selection file's choice when importance.use_selection is
    on and a benchmark chose one, else importance.estimator with params' transform."""
    path = Path(workspace) / SELECTION_FILE
    if params["importance"].get("use_selection", False) and path.is_file():
        selection = read_json(path)
        if not isinstance(selection, dict) or not isinstance(selection.get("transform"), dict):
            raise ValueError(f"{path}: expected a selection with an estimator and a transform")
        if selection.get("estimator"):
            unknown = set(selection["transform"]) - set(TRANSFORM_KEYS)
            if unknown:
                raise ValueError(f"{path}: unknown transform knobs {sorted(unknown)}; known: {', '.join(TRANSFORM_KEYS)}")
            return {"estimator": selection["estimator"], "transform": selection["transform"],
                    "source": str(SELECTION_FILE), "reason": selection.get("reason"),
                    "benchmark": selection.get("benchmark")}
    return {"estimator": params["importance"]["estimator"], "transform": transform_of(params), "source": "params"}


def run_files(choice: dict) -> dict[Path, dict]:
    """The resolved choice split into the run files the importance stages depend on."""
    estimator = {key: value for key, value in choice.items() if key != "transform"}
    return {RUN_FILE: estimator, RUN_TRANSFORM_FILE: {"transform": choice["transform"], "source": choice["source"]}}


def apply(params: dict, choice: dict) -> dict:
    """params with the importance section's estimator and transform knobs taken from `choice` (either
    may be absent: a run file holds one of them)."""
    importance = {**params["importance"], **choice.get("transform", {})}
    if choice.get("estimator"):
        importance["estimator"] = choice["estimator"]
    return {**params, "importance": importance}


def recent_days(data_dir: Path, until: str, count: int) -> list[str]:
    from pipeline.dataset import days_in

    days = [day for day in days_in(data_dir) if day <= until][-count:]
    if not days:
        raise ValueError(f"{data_dir}: no day on or before {until} to benchmark")
    return days


def run(workspace: str | Path, until: str, estimators: str | None = None) -> dict:
    from pipeline import benchmark

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
        from pipeline.repro import context_yaml, shard_count

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
