"""sieve_estimator_benchmark: weekly, which importance estimator the retrain uses.

One task runs `python -m pipeline select --workspace <ws> --until <last day of the interval>`: it
benchmarks the workspace's most recent days (benchmark.days of them, noise and rule from params),
writes the report to work/benchmark/until=<day>/ and, when an estimator won, the selection to
selection/estimator.json, tracked by DVC. The next sieve_retrain run reads it (importance.use_selection).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import CronDataIntervalTimetable, dag, task
from sieve_tasks import KNOBS, retry_args, run_pipeline, workspace


@task(task_id="select_estimator")
def select_estimator(data_interval_start=None, data_interval_end=None, logical_date=None):
    # The interval's last whole day: the run at Monday 00:00 benchmarks the days up to Sunday.
    until = ((data_interval_end or logical_date) - timedelta(days=1)).astimezone(timezone.utc).date().isoformat()
    run_pipeline(["select", "--workspace", workspace(), "--until", until], "select", until)


@dag(
    dag_id="sieve_estimator_benchmark",
    schedule=CronDataIntervalTimetable("0 0 * * 1", timezone="UTC"),
    start_date=datetime.fromisoformat(KNOBS["start_date"]).replace(tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=retry_args(),
    tags=["sieve", "importance"],
    doc_md=__doc__,
)
def sieve_estimator_benchmark():
    select_estimator()


sieve_estimator_benchmark()
