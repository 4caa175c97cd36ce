"""sieve_retrain: the daily retrain. One task per DVC stage, all for the run's day.

The day is the run's data interval (the day before its logical date), or, for a run triggered by
the sieve_raw_day asset (a day's logs landed), the day named in the event. Each stage task runs
`python -m pipeline repro --day <day> --holder <run id> <stage>` in the workspace (SIEVE_WORKSPACE,
default: this repository).

`acquire_workspace` waits until the run holds the workspace's lease (pipeline/ops/lease.py), so runs
that are active at once (a backfill's, or a backfill beside the daily run) take turns, earliest day
first; `release_workspace` (a teardown: it runs when a stage fails too) gives it back. A day the
data contract rejects fails `validate` without retries, so nothing after it runs and the champion
stays as it was. A task that fails for good writes a failure event (and posts it to the webhook
connection when there is one).

Importance scoring is mapped: `plan_shards` reads importance.shards from the workspace's params and
`importance_shard` runs once per shard (dynamic task mapping), side by side where the executor has
room; `importance` then combines, weights and reports them.

`commit` makes the run a commit in the workspace's git repository, tagged sieve/day/<day>
(pipeline/release/runs.py), so `dvc metrics diff` and `dvc plots diff` compare days by tag; a day the
data contract rejects is committed (tagged sieve/rejected/<day>) by its validate task, and a crashed
stage commits nothing. `publish` pushes the run's outputs, raw day and lineage record to the DVC
remote and the git branch and tags to `remote.git_url` (params `remote`), whether the candidate was
promoted or not: `python -m pipeline restore`, or `git clone` + `dvc pull` of a tag, gets a day back.
"""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from sieve_tasks import (KNOBS, RAW_DAY, acquire_workspace, commit_run, default_args, publish,
                          release_workspace, run_day, run_stage, stage_task, workspace)

from pipeline.runplan import SHARD_STAGE, STAGES, shard_indices


@task
def plan_shards() -> list[int]:
    """The importance shards of the workspace's params, read when the run gets here."""
    try:
        return shard_indices(workspace())
    except ValueError as exc:  # bad params: a retry cannot help
        raise AirflowFailException(f"plan_shards: {exc}") from exc


@task(task_id=SHARD_STAGE, map_index_template="shard {{ shard }}")
def score_shard(shard: int):
    context = get_current_context()
    context["shard"] = shard
    run_stage(f"{SHARD_STAGE}@{shard}", run_day(context), context["run_id"])


@dag(
    dag_id="sieve_retrain",
    schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
                                 assets=RAW_DAY),
    start_date=datetime.fromisoformat(KNOBS["start_date"]).replace(tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["sieve", "retrain"],
    doc_md=__doc__,
)
def sieve_retrain():
    # Training goes to its own queue: on Celery, the GPU worker listens on it (docker/).
    tasks = {stage: stage_task(stage, **({"queue": KNOBS["train_queue"]} if stage == "train" else {}))
             for stage in STAGES if stage != SHARD_STAGE}
    plan = plan_shards()
    tasks[SHARD_STAGE] = score_shard.expand(shard=plan)
    tasks["validate"] >> plan
    previous = acquire = acquire_workspace()
    for stage in STAGES:
        previous >> tasks[stage]
        previous = tasks[stage]
    previous >> commit_run() >> publish() >> release_workspace().as_teardown(setups=acquire)


sieve_retrain()
