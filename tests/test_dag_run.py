"""End-to-end: the sieve_retrain DAG run by Airflow (dag.test on SQLite) over real DVC stages."""
import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_services import Webhook
from conftest import DAY, ROOT, make_workspace, simulate
from pipeline.ops import events, lease, summary
from pipeline.release import champions, history
from pipeline.data.contract import DayPaths, impression_parts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("sieve_retrain")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def run_dag(dag, monkeypatch, workspace: Path, day: str):
    """One DAG run whose data interval is `day` (a run at midnight after it)."""
    monkeypatch.setenv("SIEVE_WORKSPACE", str(workspace))
    logical = datetime.fromisoformat(day).replace(tzinfo=timezone.utc) + timedelta(days=1)
    dag_run = dag.test(logical_date=logical)
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    return dag_run.state, states


def test_good_day_runs_every_stage_and_promotes(dag, monkeypatch, tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    simulate(workspace, DAY)
    state, states = run_dag(dag, monkeypatch, workspace, DAY)
    assert state == "success", states
    assert set(states.values()) == {"success"}
    assert lease.read(workspace)["holder"] is None
    assert [(r["day"], r["forced"]) for r in lease.history(workspace)] == [(DAY, False)]
    assert events.read_events(workspace) == []
    # The publish task pushed the run and its lineage record to the remote; the summary says where.
    record = json.loads((workspace / f"dvc-remote/lineage/days/{DAY}.json").read_text())
    assert record["day"] == DAY
    lines = summary.run(workspace)
    assert f"  published to: {workspace / 'dvc-remote'}" in lines
    metrics = json.loads((workspace / "work/evaluate/metrics.json").read_text())
    assert metrics["day"] == DAY and metrics["champion"] is None
    assert 0.0 <= metrics["candidate"]["auc_click"] <= 1.0
    decision = json.loads((workspace / "work/gate/decision.json").read_text())
    assert decision["decision"] == "BLESSED" and decision["without_baseline"]
    champion = champions.current(workspace / "registry")
    assert champion["day"] == DAY
    assert (champions.model_dir(workspace / "registry", champion) / "ranker" / "ranker.safetensors").is_file()
    # The commit task made the run a commit named after the DAG run, tagged with the day; publish
    # pushed the tag to the git remote.
    latest = history.run_commits(workspace)[0]
    assert latest["day"] == DAY and latest["outcome"] == "complete" and latest["run"].startswith("manual__")
    assert latest["gate"] == "BLESSED" and latest["champion"] == champion["model_id"]
    assert git(workspace, "rev-parse", f"{history.day_tag(DAY)}^{{commit}}") == latest["sha"]
    assert git(workspace / "dvc-remote.git", "rev-parse", f"{history.day_tag(DAY)}^{{commit}}") == latest["sha"]


def test_a_day_long_before_the_first_scheduled_one_runs_its_tasks(dag, monkeypatch, tmp_path):
    """A day from a real log's past (the Open Bandit sample's 2019) gets every task, instead of a run
    that succeeds with no task: its day, broken, is rejected by validate (no retry to wait for)."""
    workspace = make_workspace(tmp_path / "ws")
    simulate(workspace, "2019-11-24")
    break_missing_column(DayPaths(workspace / "data/raw", "2019-11-24"))
    state, states = run_dag(dag, monkeypatch, workspace, "2019-11-24")
    assert state == "failed"
    assert states["acquire_workspace"] == "success" and states["validate"] == "failed"
    assert states["release_workspace"] == "success" and states["promote"] == "upstream_failed"
    assert states["commit"] == "upstream_failed"
    assert lease.read(workspace)["holder"] is None
    # Rejected, and committed so: with its data-quality report, under the rejected tag only.
    latest = history.run_commits(workspace)[0]
    assert (latest["day"], latest["outcome"]) == ("2019-11-24", "rejected")
    assert git(workspace, "tag", "--list", "sieve/*").split() == [history.rejected_tag("2019-11-24")]
    assert "rejections/dt=2019-11-24/summary.json" in git(workspace, "show", "--name-only", "--format=", "HEAD")


@pytest.fixture
def webhook(monkeypatch):
    hook = Webhook()
    # An Airflow connection from the environment, the way a deployment would configure it.
    monkeypatch.setenv("AIRFLOW_CONN_SIEVE_ALERTS", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": hook.port, "schema": "hooks/sieve"}))
    yield hook
    hook.close()


def break_missing_column(paths: DayPaths) -> None:
    part = impression_parts(paths)[0]
    pq.write_table(pq.read_table(part).drop(["clicked"]), part)


def break_duplicate_event_id(paths: DayPaths) -> None:
    part = impression_parts(paths)[0]
    table = pq.read_table(part)
    frame = table.to_pandas()
    frame.loc[1, "event_id"] = frame.loc[0, "event_id"]
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), part)


@pytest.mark.parametrize("breaker, expected", [
    (break_missing_column, ["clicked"]),
    (break_duplicate_event_id, ["event_id", "unique"]),
])
def test_bad_day_stops_at_validation_and_keeps_the_champion(dag, monkeypatch, tmp_path, capfd, webhook,
                                                            breaker, expected):
    workspace = make_workspace(tmp_path / "ws")
    simulate(workspace, DAY)
    breaker(DayPaths(workspace / "data/raw", DAY))
    # A champion from an earlier day, so there is something to keep untouched.
    encoder, ranker_dir = tmp_path / "old/encoder", tmp_path / "old/ranker"
    encoder.mkdir(parents=True)
    ranker_dir.mkdir(parents=True)
    (encoder / "config.json").write_text("{}")
    champions.promote(workspace / "registry", "2026-10-31", encoder, ranker_dir)
    pointer = workspace / "registry/champion.json"
    before = pointer.read_bytes()

    state, states = run_dag(dag, monkeypatch, workspace, DAY)

    assert state == "failed"
    assert states["validate"] == "failed"
    assert all(states[t] == "upstream_failed" for t in ("corpus", "pretrain", "plan_shards", "importance_shard",
                                                         "importance", "train", "evaluate", "gate", "promote"))
    assert pointer.read_bytes() == before
    assert not (workspace / "work/pretrain").exists()
    # The teardown gave the lease back although the run failed.
    assert states["acquire_workspace"] == "success" and states["release_workspace"] == "success"
    assert lease.read(workspace)["holder"] is None
    # One failure event, on disk and posted to the connection's URL, naming the task, day and reason.
    [event] = events.read_events(workspace)
    assert (event["dag_id"], event["task_id"], event["day"]) == ("sieve_retrain", "validate", DAY)
    assert "rejected the day" in event["error"] and all(word in event["error"] for word in expected)
    assert webhook.received == [("/hooks/sieve", event)]
    # dag.test() writes the task log to the console: the failure names the rule and the column.
    output = capfd.readouterr()
    reason = [line for line in (output.out + output.err).splitlines()
              if "AirflowFailException: repro: validate rejected the day" in line]
    assert reason, "the validate task did not fail with the rejection message"
    for word in expected:
        assert word in reason[0]
    summary = json.loads((workspace / f"work/validate/dt={DAY}/summary.json").read_text())
    assert summary["success"] is False


@pytest.fixture(scope="module")
def landed_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("sieve_raw_landed")


def test_announcing_a_landed_day_emits_the_asset_event_with_the_day(landed_dag, monkeypatch, tmp_path):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    workspace = make_workspace(tmp_path / "ws")
    simulate(workspace, DAY)
    monkeypatch.setenv("SIEVE_WORKSPACE", str(workspace))
    landed = landed_dag.test(run_conf={"day": DAY})
    assert landed.state == "success"
    with create_session() as session:
        extras = [e.extra for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == landed.run_id)]
    assert extras == [{"day": DAY}]

    missing = landed_dag.test(run_conf={"day": "2026-11-09"})
    assert missing.state == "failed"
    [event] = events.read_events(workspace)
    assert event["task_id"] == "announce_day" and "2026-11-09 has not landed" in event["error"]
