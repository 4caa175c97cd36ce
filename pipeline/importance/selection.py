"""The estimator the retrain uses: the weekly benchmark's selection, or params when there is none.

`python -m pipeline select --workspace WS --until DAY` runs the weekly benchmark as the DVC stage of
weekly/dvc.yaml over the workspace's most recent days up to DAY (benchmark.days of them): report,
benchmark.json and the verdict go to work/benchmark/until=DAY. When the verdict names an estimator,
select writes it to selection/estimator.json (a small file git keeps: every run commit holds the
selection in force); when it names none, that file stays as it was. The benchmark picks by the
recovery on benchmark.metric: NDCG@10 against the true relevance on a simulated log, the click AUC on
a log without truth. Before each retrain, repro resolves the choice into run/estimator.json and
run/weight_transform.json (dependencies of the importance stages), so a new selection rescores the
next day and an unchanged one is a DVC cache hit.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.atomic import read_json

SELECTION_FILE = Path("selection") / "estimator.json"
# What repro resolves the choice into before a retrain: the estimator (the scoring shards' input) and the
# weight transform (the combine's), apart, so a new transform reruns the combine only.
RUN_FILE = Path("run") / "estimator.json"
RUN_TRANSFORM_FILE = Path("run") / "weight_transform.json"
# The weekly benchmark's pipeline (run by `python -m pipeline select`): its context (the week), its stage
# (a foreach over the context's one week, named WEEK_KEY), and each week's output folder, where the
# benchmark writes its verdict beside its report (benchmark/run.py's SELECTION_FILE).
WEEKLY_PIPELINE = Path("weekly") / "dvc.yaml"
WEEKLY_LOCK = Path("weekly") / "dvc.lock"
WEEKLY_CONTEXT = Path("weekly") / "context.yaml"
WEEK_KEY = "latest"
WEEKLY_STAGE = f"benchmark@{WEEK_KEY}"
VERDICT_FILE = "selection.json"
# The knobs of params' importance section that turn scores into weights: what a selection carries.
TRANSFORM_KEYS = ("temperature", "clip", "balance_by", "normalise", "drop_lowest_percent", "drop_sessions_percent")


def benchmark_dir(until: str) -> Path:
    """The weekly benchmark's output folder for the week up to `until` (relative to the workspace)."""
    return Path("work") / "benchmark" / f"until={until}"


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
