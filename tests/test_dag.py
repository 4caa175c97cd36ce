"""DAG integrity: it loads, its tasks run the stages in order, retries are set, parsing is light."""
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from conftest import ROOT

from pipeline.runplan import SHARD_STAGE, STAGES


@pytest.fixture(scope="module")
def bag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="module")
def dag(bag):
    return bag.get_dag("sieve_retrain")


def test_tasks_run_the_stages_in_order_inside_the_workspace_lease(dag):
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "acquire_workspace" and order[-1] == "release_workspace"
    assert [t for t in order[1:-1] if t != "plan_shards"] == [*STAGES, "commit", "publish"]
    assert order.index("validate") < order.index("plan_shards") < order.index(SHARD_STAGE)
    assert dag.get_task(STAGES[0]).upstream_task_ids == {"acquire_workspace"}
    for upstream, downstream in zip(STAGES, STAGES[1:]):
        expected = {upstream, "plan_shards"} if downstream == SHARD_STAGE else {upstream}
        assert dag.get_task(downstream).upstream_task_ids == expected
    assert dag.get_task("plan_shards").upstream_task_ids == {"validate"}


def test_the_lease_is_given_back_by_a_teardown_that_runs_on_failure_too(dag):
    release = dag.get_task("release_workspace")
    assert release.is_teardown
    assert release.trigger_rule == "all_done_setup_success"
    assert dag.get_task("commit").upstream_task_ids == {STAGES[-1]}
    assert dag.get_task("publish").upstream_task_ids == {"commit"}
    assert release.upstream_task_ids == {"publish", "acquire_workspace"}
    acquire = dag.get_task("acquire_workspace")
    assert acquire.is_setup and acquire.mode == "reschedule"


def test_train_goes_to_the_queue_params_name(dag):
    import yaml

    queue = yaml.safe_load((ROOT / "params.yaml").read_text())["dag"]["train_queue"]
    assert dag.get_task("train").queue == queue


def test_every_task_notifies_when_it_fails_for_good(dag):
    for t in dag.tasks:
        callbacks = t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback]
        assert [cb.__name__ for cb in callbacks] == ["notify_failure"], t.task_id


def test_importance_scoring_is_mapped_over_the_planned_shards(dag):
    """Dynamic task mapping: one scoring task per shard, the shards coming from plan_shards at run time."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    shard_task = dag.get_task(SHARD_STAGE)
    assert isinstance(shard_task, MappedOperator)
    assert not isinstance(dag.get_task("importance"), MappedOperator)


def test_schedule_daily_or_when_a_day_lands(bag, dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    schedule = dag.timetable
    assert type(schedule).__name__ == "AssetOrTimeSchedule"
    assert schedule.timetable.expression == "0 0 * * *"
    assert schedule.asset_condition.name == "sieve_raw_day"
    announce = bag.get_dag("sieve_raw_landed").get_task("announce_day")
    assert [o.name for o in announce.outlets] == ["sieve_raw_day"]


def test_every_task_retries_with_backoff(dag):
    for t in dag.tasks:
        assert t.retries >= 2, t.task_id
        assert t.retry_exponential_backoff > 1, t.task_id
        assert t.retry_delay.total_seconds() > 0


def test_a_run_processes_its_data_interval(dag):
    """A run at midnight on the 2nd processes the 1st: the day is the interval's start."""
    from airflow.serialization.encoders import coerce_to_core_timetable

    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(
        run_after=datetime(2026, 11, 2, tzinfo=timezone.utc))
    assert interval.start.date().isoformat() == "2026-11-01"
    assert (interval.end - interval.start).days == 1


def test_parsing_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "heavy = ['torch', 'transformers', 'pandas', 'great_expectations', 'sklearn', 'dvc']\n"
        "print('HEAVY:' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert [line for line in out.stdout.splitlines() if line.startswith("HEAVY:")] == ["HEAVY:"]


def test_the_weekly_benchmark_selects_and_publishes_inside_the_workspace_lease(bag):
    weekly = bag.get_dag("sieve_estimator_benchmark")
    order = [t.task_id for t in weekly.topological_sort()]
    assert order == ["acquire_workspace", "select_estimator", "publish_selection", "release_workspace"]
    assert weekly.get_task("select_estimator").upstream_task_ids == {"acquire_workspace"}
    assert weekly.get_task("publish_selection").upstream_task_ids == {"select_estimator"}
    release = weekly.get_task("release_workspace")
    assert release.is_teardown and release.upstream_task_ids == {"publish_selection", "acquire_workspace"}
    assert weekly.get_task("acquire_workspace").is_setup
    assert weekly.timetable.expression == "0 0 * * 1" and weekly.catchup is False
