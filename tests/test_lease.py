"""The workspace lease: one holder at a time, the earliest queued day first, given back by its holder."""
import subprocess
import sys

import pytest
import yaml

from conftest import DAY, ROOT, make_workspace
from pipeline.ops import lease

STALE = 60.0


@pytest.fixture
def clock(monkeypatch):
    """Lease time under the test's control (the queue's rules are about seconds waited)."""
    now = [1000.0]
    monkeypatch.setattr(lease, "now", lambda: now[0])
    return now


def test_one_holder_at_a_time_and_a_retry_of_the_holder_keeps_it(tmp_path, clock):
    assert lease.acquire(tmp_path, "run-a", "2026-11-01", STALE) is None
    assert lease.acquire(tmp_path, "run-a", "2026-11-01", STALE) is None
    waits = lease.acquire(tmp_path, "run-b", "2026-11-02", STALE)
    assert "run-a" in waits and "2026-11-01" in waits
    assert lease.read(tmp_path)["holder"] == "run-a"
    lease.check(tmp_path, "run-a")
    with pytest.raises(lease.LeaseHeld, match="run-a"):
        lease.check(tmp_path, "run-b")


def test_the_earliest_waiting_day_goes_first_whatever_the_order_they_asked_in(tmp_path, clock):
    lease.acquire(tmp_path, "holder", "2026-11-05", STALE)
    for holder, day in (("third", "2026-11-03"), ("first", "2026-11-01"), ("second", "2026-11-02")):
        assert lease.acquire(tmp_path, holder, day, STALE, settle=2) is not None
    lease.release(tmp_path, "holder")
    clock[0] += 3
    order = []
    for _ in range(3):
        for holder, day in (("third", "2026-11-03"), ("second", "2026-11-02"), ("first", "2026-11-01")):
            if holder not in order and lease.acquire(tmp_path, holder, day, STALE, settle=2) is None:
                order.append(holder)
                lease.release(tmp_path, holder)
    assert order == ["first", "second", "third"]
    assert [r["holder"] for r in lease.history(tmp_path)] == ["holder", "first", "second", "third"]


def test_a_run_new_to_the_queue_waits_a_poke_before_taking_a_free_lease(tmp_path, clock):
    assert "first in the queue" in lease.acquire(tmp_path, "late", "2026-11-03", STALE, settle=5)
    # An earlier day that asks within that time goes first.
    clock[0] += 1
    assert lease.acquire(tmp_path, "early", "2026-11-01", STALE, settle=5) is not None
    clock[0] += 5
    assert lease.acquire(tmp_path, "late", "2026-11-03", STALE, settle=5) is not None
    assert lease.acquire(tmp_path, "early", "2026-11-01", STALE, settle=5) is None


def test_a_run_that_stopped_asking_no_longer_holds_the_queue_up(tmp_path, clock):
    lease.acquire(tmp_path, "holder", "2026-11-09", STALE)
    lease.acquire(tmp_path, "gone", "2026-11-01", STALE)
    lease.release(tmp_path, "holder")
    assert lease.acquire(tmp_path, "later", "2026-11-02", STALE) is not None
    clock[0] += STALE + 1
    assert lease.acquire(tmp_path, "later", "2026-11-02", STALE) is None


def test_only_the_holder_gives_it_back_unless_broken(tmp_path, clock):
    lease.acquire(tmp_path, "run-a", DAY, STALE)
    assert lease.release(tmp_path, "run-b") is None
    assert lease.read(tmp_path)["holder"] == "run-a"
    broken = lease.release(tmp_path)
    assert broken["holder"] == "run-a" and broken["forced"] is True
    assert lease.read(tmp_path)["holder"] is None
    lease.acquire(tmp_path, "run-b", DAY, STALE)
    assert lease.release(tmp_path, "run-b")["forced"] is False
    lease.acquire(tmp_path, "run-c", DAY, STALE)
    assert lease.release(tmp_path, "run-c", taken_over=True)["forced"] is True


def test_the_run_context_is_marked_written_for_its_holder_only(tmp_path, clock):
    lease.acquire(tmp_path, "run-a", DAY, STALE)
    assert not lease.check(tmp_path, "run-a").get("prepared")
    lease.mark_prepared(tmp_path, "run-a")
    assert lease.check(tmp_path, "run-a")["prepared"] is True
    with pytest.raises(lease.LeaseHeld):
        lease.mark_prepared(tmp_path, "run-b")
    lease.release(tmp_path, "run-a")
    lease.acquire(tmp_path, "run-b", DAY, STALE)
    assert not lease.check(tmp_path, "run-b").get("prepared")


def test_repro_by_hand_refuses_to_run_inside_another_run(workspace):
    lease.acquire(workspace, "scheduled__2026-11-02", DAY, STALE)
    result = subprocess.run([sys.executable, "-m", "pipeline", "repro", "--workspace", str(workspace),
                             "--day", DAY, "validate"], capture_output=True, text=True)
    assert result.returncode == 4
    assert "busy" in result.stderr and "scheduled__2026-11-02" in result.stderr
    assert not (workspace / "run" / "context.yaml").exists()
    # A stage called for a run that does not hold the lease refuses too.
    result = subprocess.run([sys.executable, "-m", "pipeline", "repro", "--workspace", str(workspace),
                             "--day", DAY, "--holder", "backfill__2026-11-01", "validate"],
                            capture_output=True, text=True)
    assert result.returncode == 4 and "does not hold" in result.stderr
    shown = subprocess.run([sys.executable, "-m", "pipeline", "lease", "--workspace", str(workspace)],
                           capture_output=True, text=True, check=True)
    assert "scheduled__2026-11-02" in shown.stdout
    subprocess.run([sys.executable, "-m", "pipeline", "lease", "--workspace", str(workspace), "--break"],
                   check=True, capture_output=True)
    assert lease.read(workspace)["holder"] is None


def test_a_by_hand_holder_that_was_killed_does_not_keep_the_lease(tmp_path, clock):
    dead = subprocess.run([sys.executable, "-c", "from pipeline.ops import lease; print(lease.command_holder())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert lease.acquire(tmp_path, dead, DAY, STALE) is None
    assert lease.acquire(tmp_path, "scheduled__2026-11-02", DAY, STALE) is None
    assert lease.history(tmp_path)[-1] == {**lease.history(tmp_path)[-1], "holder": dead, "forced": True}
    # A live one (this process) keeps it.
    lease.release(tmp_path, "scheduled__2026-11-02")
    assert lease.acquire(tmp_path, lease.command_holder(), DAY, STALE) is None
    assert lease.acquire(tmp_path, "scheduled__2026-11-03", DAY, STALE) is not None


def test_a_lone_run_takes_a_free_lease_at_once_while_a_crowd_waits_a_poke(tmp_path, clock):
    poke = 30
    assert lease.acquire(tmp_path, "alone", DAY, STALE, settle=lease.settle_seconds(0, poke)) is None
    held = lease.read(tmp_path)
    assert held["waited_seconds"] == 0 and held["asked_at"] == held["acquired_at"]
    lease.release(tmp_path, "alone")
    assert lease.history(tmp_path)[-1]["waited_seconds"] == 0
    # With another active run (or when Airflow cannot say), a free lease still waits a poke in the queue.
    for others in (1, None):
        holder = f"crowd-{others}"
        settle = lease.settle_seconds(others, poke)
        assert "first in the queue" in lease.acquire(tmp_path, holder, DAY, STALE, settle=settle)
        clock[0] += poke
        assert lease.acquire(tmp_path, holder, DAY, STALE, settle=settle) is None
        assert lease.read(tmp_path)["waited_seconds"] == poke
        lease.release(tmp_path, holder)


LONE_DAG = """
from datetime import datetime, timezone

from airflow.sdk import dag
from sieve_tasks import acquire_workspace, release_workspace


@dag(dag_id="sieve_lease_alone", schedule=None, start_date=datetime(2026, 11, 1, tzinfo=timezone.utc))
def alone():
    acquire = acquire_workspace()
    acquire >> release_workspace().as_teardown(setups=acquire)


alone()
"""


@pytest.mark.slow
def test_a_lone_airflow_run_takes_the_lease_on_its_first_poke(tmp_path, monkeypatch, airflow_db):
    """The DAG's own lease tasks (plugins/sieve_tasks.py) in a run alone (dag.test): taken on the
    first poke, with no poke interval spent in the queue."""
    from datetime import datetime, timezone

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    workspace, dags = tmp_path / "ws", tmp_path / "dags"
    workspace.mkdir()
    dags.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    poke = params["dag"]["lease"]["poke_seconds"]
    assert poke >= 10  # the default interval, far from what a lone run may wait
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    (dags / "lone.py").write_text(LONE_DAG)
    monkeypatch.setenv("SIEVE_WORKSPACE", str(workspace))
    # dag.test runs a DAG the metadata database knows: serialize this one into it first.
    DagBundlesManager().sync_bundles_to_db()
    bag = BundleDagBag(dag_folder=str(dags), bundle_path=str(dags), bundle_name="dags-folder")
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.get_dag("sieve_lease_alone")

    run = dag.test(logical_date=datetime.fromisoformat(DAY).replace(tzinfo=timezone.utc))  # no schedule: the day itself
    assert run.state == "success"
    [record] = lease.history(workspace)
    assert record["day"] == DAY and record["forced"] is False
    assert record["waited_seconds"] < 1.0 and record["asked_at"] == record["acquired_at"]


def test_a_stage_on_a_worker_without_the_shared_workspace_refuses_and_says_why(workspace, tmp_path):
    # The run took the lease of the shared workspace; this worker's SIEVE_WORKSPACE is another folder.
    lease.acquire(workspace, "backfill__2026-11-02", DAY, STALE)
    elsewhere = make_workspace(tmp_path / "not-shared")
    result = subprocess.run([sys.executable, "-m", "pipeline", "repro", "--workspace", str(elsewhere), "--day", DAY,
                             "--holder", "backfill__2026-11-02", "validate"], capture_output=True, text=True)
    assert result.returncode == 4, result.stderr
    assert "no run holds this workspace's lease" in result.stderr and "shared folder" in result.stderr
    assert not (elsewhere / "run" / "context.yaml").exists() and not (elsewhere / "work").exists()
