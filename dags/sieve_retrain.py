"""sieve_retrain: the daily retrain. One task per DVC stage, all for the run's data interval (one day).

Each task runs `python -m pipeline repro --day <day> <stage>` in the workspace (SIEVE_WORKSPACE,
default: this repository). A day the data contract rejects fails `validate` without retries, so
nothing after it runs and the champion stays as it was.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from airflow.sdk import CronDataIntervalTimetable, dag, task
from airflow.sdk.exceptions import AirflowFailException

from pipeline.repro import EXIT_DATA_REJECTED, REJECTION_PREFIX, STAGES

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


def stage_task(stage: str):
    @task(task_id=stage)
    def run(data_interval_start=None, logical_date=None):
        start = data_interval_start or logical_date
        if start is None:
            raise AirflowFailException("the run has no data interval: trigger it with a logical date")
        run_stage(stage, start.astimezone(timezone.utc).date().isoformat())
    return run()


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
    previous = None
    for stage in STAGES:
        current = stage_task(stage)
        if previous is not None:
            previous >> current
        previous = current


sieve_retrain()
