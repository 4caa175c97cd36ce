"""sieve_retrain: the daily retrain. One task per DVC stage, all for the run's data interval (one day).

Each task runs `python -m pipeline repro --day <day> <stage>` in the workspace (SIEVE_WORKSPACE,
default: this repository). A day the data contract rejects fails `validate` without retries, so
nothing after it runs and the champion stays as it was.

Importance scoring is mapped: `plan_shards` reads importance.shards from the workspace's params and
`importance_shard` runs once per shard (dynamic task mapping), side by side where the executor has
room; `importance` then combines, weights and reports them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from pipeline.repro import EXIT_DATA_REJECTED, REJECTION_PREFIX, SHARD_STAGE, STAGES, shard_indices

PROJECT = Path(__file__).resolve().parents[1]
KNOBS = yaml.safe_load((PROJECT / "params.yaml").read_text())["dag"]


def workspace() -> str:
    return os.environ.get("SIEVE_WORKSPACE", str(PROJECT))


def run_stage(stage: str, day: str) -> None:
    """Stream the stage's output into the task log; map its exit code to retry or fail-fast."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "repro", "--workspace", workspace(),
                             "--day", day, stage],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rejection = None
    for line in proc.stdout:
        print(line, end="")
        if line.startswith(REJECTION_PREFIX):
            rejection = line.strip()
    if proc.wait() == EXIT_DATA_REJECTED:
        raise AirflowFailException(rejection or f"{stage}: the day's data was rejected")
    if proc.returncode:
        raise RuntimeError(f"stage {stage} failed for {day} (exit {proc.returncode})")


def run_day(data_interval_start, logical_date) -> str:
    start = data_interval_start or logical_date
    if start is None:
        raise AirflowFailException("the run has no data interval: trigger it with a logical date")
    return start.astimezone(timezone.utc).date().isoformat()


def stage_task(stage: str):
    @task(task_id=stage)
    def run(data_interval_start=None, logical_date=None):
        run_stage(stage, run_day(data_interval_start, logical_date))
    return run()


@task
def plan_shards() -> list[int]:
    """The importance shards of the workspace's params, read when the run gets here."""
    try:
        return shard_indices(workspace())
    except ValueError as exc:  # bad params: a retry cannot help
        raise AirflowFailException(f"plan_shards: {exc}") from exc


@task(task_id=SHARD_STAGE, map_index_template="shard {{ shard }}")
def score_shard(shard: int, data_interval_start=None, logical_date=None):
    get_current_context()["shard"] = shard
    run_stage(f"{SHARD_STAGE}@{shard}", run_day(data_interval_start, logical_date))


@dag(
    dag_id="sieve_retrain",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime.fromisoformat(KNOBS["start_date"]).replace(tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": KNOBS["retries"],
        "retry_delay": timedelta(seconds=KNOBS["retry_delay_seconds"]),
        "retry_exponential_backoff": KNOBS["retry_backoff_multiplier"],
        "max_retry_delay": timedelta(seconds=KNOBS["max_retry_delay_seconds"]),
        "execution_timeout": timedelta(minutes=KNOBS["stage_timeout_minutes"]),
    },
    tags=["sieve", "retrain"],
    doc_md=__doc__,
)
def sieve_retrain():
    tasks = {stage: stage_task(stage) for stage in STAGES if stage != SHARD_STAGE}
    plan = plan_shards()
    tasks[SHARD_STAGE] = score_shard.expand(shard=plan)
    tasks["validate"] >> plan
    previous = None
    for stage in STAGES:
        if previous is not None:
            previous >> tasks[stage]
        previous = tasks[stage]


sieve_retrain()
