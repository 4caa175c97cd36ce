"""sieve_estimator_benchmark: weekly, which importance estimator the retrain uses.

`acquire_workspace` waits until the run holds the workspace's lease (pipeline/ops/lease.py), as the
retrain's runs do: the Monday run starts at the same time as that day's retrain, and the benchmark
must not run in the middle of it. `select_estimator` then runs `python -m pipeline select --workspace
<ws> --until <last day of the interval> --holder <run id>`: the weekly benchmark stage of
weekly/dvc.yaml through DVC over the workspace's most recent days (benchmark.days of them, noise and
rule from params), its report in work/benchmark/until=<day>/ and, when an estimator won, the selection
in selection/estimator.json (else the previous one stays), committed and tagged sieve/week/<day>.
`publish_selection` pushes the week's outputs and the git tags to the remotes (`python -m pipeline
publish --week <day>`), and `release_workspace` (a teardown) gives the lease back. The next
sieve_retrain run reads the selection (importance.use_selection).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from sieve_tasks import (
    KNOBS,
    acquire_workspace,
    release_workspace,
    retry_args,
    run_pipeline,
    workspace,
)

from pipeline.ops import lease


def week_until(context) -> str:
    """The interval's last whole day: the run at Monday 00:00 benchmarks the days up to Sunday."""
    end = context.get("data_interval_end") or context["logical_date"]
    return (end - timedelta(days=1)).astimezone(timezone.utc).date().isoformat()


@task(task_id="select_estimator")
def select_estimator():
    context = get_current_context()
    until = week_until(context)
    run_pipeline(["select", "--workspace", workspace(), "--until", until, "--holder", context["run_id"]],
                 "select", until)


@task(task_id="publish_selection")
def publish_selection():
    context = get_current_context()
    until = week_until(context)
    try:
        lease.check(workspace(), context["run_id"])
    except lease.LeaseHeld as exc:
        raise AirflowFailException(f"publish: {exc}") from exc
    run_pipeline(["publish", "--workspace", workspace(), "--week", until], "publish", until)


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
    acquire = acquire_workspace()
    acquire >> select_estimator() >> publish_selection() >> release_workspace().as_teardown(setups=acquire)


sieve_estimator_benchmark()
