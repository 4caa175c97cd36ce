"""What the sieve DAGs share: the workspace, the run's day, the stage runner, the workspace lease
tasks and the failure notifier. It lives in plugins/ because Airflow puts the plugins folder on
every process's sys.path (the DAG folder is on it only for some ways of loading DAGs).

Everything here is glue between Airflow's context and `python -m pipeline ...`; the work and its
rules live in pipeline/.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta, timezone
from pathlib import Path

import yaml
from airflow.sdk import Asset, Connection, PokeReturnValue, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from pipeline.ops import events, lease
from pipeline.days import parse_day
from pipeline.runplan import EXIT_DATA_REJECTED, EXIT_LEASE_HELD, REJECTION_PREFIX

PROJECT = Path(__file__).resolve().parents[1]


def workspace() -> str:
    return os.environ.get("SIEVE_WORKSPACE", str(PROJECT))


# The DAGs' knobs come from the workspace's params (plain YAML, read at parse time): the workspace
# is what a deployment configures.
KNOBS = yaml.safe_load((Path(workspace()) / "params.yaml").read_text())["dag"]

# A day of raw logs landed in the workspace (data/raw/*/dt=<day>): the event's extra says which day,
# {"day": "YYYY-MM-DD"}. sieve_raw_landed emits it; any producer may, through the REST API.
RAW_DAY = Asset(name="sieve_raw_day", uri="x-sieve://raw-day")


def landed_day(asset_events) -> str | None:
    """The newest day among the events that triggered the run (None: not triggered by data)."""
    days = [event.extra.get("day") for events_of_asset in (asset_events or {}).values()
            for event in events_of_asset if isinstance(event.extra, dict)]
    days = [day for day in days if day]
    return max(days) if days else None


def run_day(context) -> str:
    """The day the run processes: its data interval's start, or the landed day for a data-triggered run."""
    start = context.get("data_interval_start") or context.get("logical_date")
    if start is not None:
        return start.astimezone(timezone.utc).date().isoformat()
    day = landed_day(context.get("triggering_asset_events"))
    if day is None:
        raise AirflowFailException("the run has no data interval and no landed day: trigger it with a "
                                   "logical date, or through the sieve_raw_day asset with extra {\"day\": ...}")
    try:
        return parse_day(day)
    except ValueError as exc:
        raise AirflowFailException(f"the sieve_raw_day event's day: {exc}") from exc


def run_pipeline(args: list[str], what: str, day: str) -> None:
    """Run `python -m pipeline <args>`, streaming its output into the task log; map its exit code to
    retry (a crash) or fail-fast (rejected data, another run's workspace)."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rejection = None
    for line in proc.stdout:
        print(line, end="")
        if line.startswith(REJECTION_PREFIX):
            rejection = line.strip()
    code = proc.wait()
    if code == EXIT_DATA_REJECTED:
        raise AirflowFailException(rejection or f"{what}: the day's data was rejected")
    if code == EXIT_LEASE_HELD:
        raise AirflowFailException(f"{what}: this run does not hold the workspace's lease (see the log)")
    if code:
        raise RuntimeError(f"{what} failed for {day} (exit {code})")


def run_stage(stage: str, day: str, holder: str) -> None:
    run_pipeline(["repro", "--workspace", workspace(), "--day", day, "--holder", holder, stage],
                 f"stage {stage}", day)


def stage_task(stage: str, **task_kwargs):
    @task(task_id=stage, **task_kwargs)
    def run():
        context = get_current_context()
        run_stage(stage, run_day(context), context["run_id"])
    return run()


@task(task_id="commit")
def commit_run() -> None:
    """Commit the run to the workspace's git repository and tag its day (python -m pipeline commit)."""
    context = get_current_context()
    day = run_day(context)
    try:
        lease.check(workspace(), context["run_id"])
    except lease.LeaseHeld as exc:
        raise AirflowFailException(f"commit: {exc}") from exc
    run_pipeline(["commit", "--workspace", workspace(), "--day", day, "--run-id", context["run_id"]], "commit", day)


@task(task_id="publish")
def publish() -> None:
    """Push the run's outputs and its lineage record to the DVC remote (python -m pipeline publish)."""
    context = get_current_context()
    day = run_day(context)
    try:
        lease.check(workspace(), context["run_id"])
    except lease.LeaseHeld as exc:
        raise AirflowFailException(f"publish: {exc}") from exc
    run_pipeline(["publish", "--workspace", workspace(), "--day", day], "publish", day)


@task.sensor(task_id="acquire_workspace", mode="reschedule",
             poke_interval=KNOBS["lease"]["poke_seconds"],
             timeout=timedelta(minutes=KNOBS["lease"]["timeout_minutes"]).total_seconds())
def acquire_workspace() -> PokeReturnValue:
    """Wait (without holding a worker slot) until this run holds the workspace's lease."""
    context = get_current_context()
    ws, holder = workspace(), context["run_id"]
    current = lease.read(ws)
    dag_id = context["dag"].dag_id
    # A run that ended without its teardown (marked failed by hand, say) would hold the lease forever.
    if current and current.get("holder") not in (None, holder) and finished(context, dag_id, current["holder"]):
        print(f"taking the lease over from {current['holder']!r}: that run has ended")
        lease.release(ws, current["holder"], taken_over=True)
    others = other_active_runs(context, dag_id)
    waits = lease.acquire(ws, holder, run_day(context), stale_after=KNOBS["lease"]["stale_after_seconds"],
                          settle=lease.settle_seconds(others, KNOBS["lease"]["poke_seconds"]))
    print(f"holds the lease of {ws}" if waits is None else f"waiting: {waits}")
    return PokeReturnValue(is_done=waits is None)


def other_active_runs(context, dag_id: str) -> int | None:
    """Queued or running runs of this DAG besides this one (None: Airflow could not say). Only this
    DAG's runs take the lease by turns; a by-hand repro takes it at once or not at all."""
    try:
        count = context["ti"].get_dr_count(dag_id=dag_id, states=["queued", "running"])
    except Exception as exc:  # an older API server: wait a poke, as before
        print(f"could not count the active runs ({exc}); waiting a poke before taking a free lease")
        return None
    return max(int(count) - 1, 0)


def finished(context, dag_id: str, run_id: str) -> bool:
    if run_id.startswith(lease.CLI_PREFIX):
        return False  # a by-hand holder: the lease itself frees it when its process is gone
    try:
        return context["ti"].get_dagrun_state(dag_id=dag_id, run_id=run_id) in ("success", "failed")
    except Exception:  # a run of another DAG, or one deleted from the database: cannot tell
        return False


@task(task_id="release_workspace")
def release_workspace() -> None:
    record = lease.release(workspace(), get_current_context()["run_id"])
    print(f"gave the lease back: {record}" if record else "this run did not hold the lease")


def notify_failure(context) -> None:
    """on_failure_callback: a task failed for good, so its run fails. Write the event; post it to the
    webhook connection when one is configured. A notifier's own failure must not hide the task's."""
    ti = context["ti"]
    try:
        day = run_day(context)
    except Exception:
        day = None
    event = events.failure_event(
        dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=getattr(ti, "map_index", None),
        try_number=getattr(ti, "try_number", None), day=day,
        error=f"{type(context.get('exception')).__name__}: {context.get('exception')}",
        log_url=getattr(ti, "log_url", None))
    path = events.append_event(workspace(), event)
    print(f"failure event written to {path}")
    conn_id = KNOBS["alerts"]["webhook_conn_id"]
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return
    url = webhook_url(conn)
    try:
        status = events.post_json(url, event, timeout=KNOBS["alerts"]["timeout_seconds"],
                                  headers=conn.extra_dejson.get("headers") or {})
        print(f"failure event posted to {conn_id} ({status})")
    except Exception as exc:
        print(f"could not post the failure event to {conn_id}: {exc}")


def webhook_url(conn) -> str:
    """An http(s) connection's URL: host may hold the whole URL, or host, port, schema (path) apart."""
    host = conn.host or ""
    if "://" in host:
        return host
    scheme = "https" if conn.conn_type == "https" else "http"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.lstrip('/')}" if conn.schema else ""
    return f"{scheme}://{host}{port}{path}"


def retry_args() -> dict:
    """Every sieve task's: retries, and the failure notifier once they are spent."""
    return {
        "retries": KNOBS["retries"],
        "retry_delay": timedelta(seconds=KNOBS["retry_delay_seconds"]),
        "on_failure_callback": notify_failure,
    }


def default_args() -> dict:
    """The retrain's stage tasks': retries with backoff, and a time limit per stage."""
    return {
        **retry_args(),
        "retry_exponential_backoff": KNOBS["retry_backoff_multiplier"],
        "max_retry_delay": timedelta(seconds=KNOBS["max_retry_delay_seconds"]),
        "execution_timeout": timedelta(minutes=KNOBS["stage_timeout_minutes"]),
    }
