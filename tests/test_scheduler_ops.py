"""Operations against a real Airflow scheduler (LocalExecutor on SQLite, api-server, dag-processor):
a three-day `airflow backfill create` with three runs active at once, a data-triggered run and a
second one (of a broken day) beside it, the train stage of the first day SIGKILLed mid-way and
completed by Airflow's retry, and the broken day's failure posted to a webhook.

One deployment serves every test here: it runs the whole scenario once and the tests read what it
left (the Airflow API's runs and task instances, the workspace's lease log, reports and registry).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import pyarrow.parquet as pq

from airflow_services import AirflowServices, Webhook
from conftest import make_workspace, run, simulate, tiny_params
from pipeline.ops import events, lease
from pipeline.release import champions
from pipeline.data.contract import DayPaths, impression_parts

pytestmark = pytest.mark.slow

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
BACKFILLED = DAYS[:3]
LANDED = DAYS[3]
BROKEN = "2026-11-05"  # its impressions lose the `clicked` column: validate rejects it


def ops_params() -> dict:
    params = tiny_params()
    params["dag"].update(
        # No scheduled run in the test's lifetime: the backfill and the landed day are the runs.
        start_date="2030-01-01", retries=2, retry_delay_seconds=2, retry_backoff_multiplier=1.5,
        max_retry_delay_seconds=5, lease={"poke_seconds": 10, "timeout_minutes": 30, "stale_after_seconds": 60})
    # More, smaller steps with frequent checkpoints: training lasts long enough to be killed mid-way.
    params["train"].update(epochs=4, batch_size=64, checkpoint_every_steps=5)
    params["train"]["early_stopping"]["patience"] = 0
    return params


class TrainKiller(threading.Thread):
    """SIGKILLs the workspace's first `pipeline train` process once it has written a checkpoint (so it
    is mid-way), and notes what the train outputs looked like right after."""

    def __init__(self, workspace: Path):
        super().__init__(daemon=True)
        self.workspace, self.killed, self.after_kill, self.stop = workspace, None, None, threading.Event()

    def train_process(self):
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            cmd = proc.info["cmdline"] or []
            if "pipeline" in cmd and "train" in cmd and proc.info["cwd"] == str(self.workspace):
                return proc
        return None

    def run(self):
        checkpoints = self.workspace / "work/checkpoints/train"
        while not self.stop.is_set() and self.killed is None:
            proc = self.train_process()
            if proc is not None and checkpoints.is_dir() and any(checkpoints.glob("step-*")):
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    continue
                proc.wait(timeout=30)
                work = self.workspace / "work"
                self.killed = {"pid": proc.pid, "checkpoints": sorted(p.name for p in checkpoints.glob("step-*"))}
                self.after_kill = {"model": (work / "train/model").exists(),
                                   "metrics": (work / "train/metrics.json").exists()}
            time.sleep(0.05)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    base = tmp_path_factory.mktemp("ops")
    workspace = make_workspace(base / "ws", ops_params())
    simulate(workspace, DAYS[0], days=len(DAYS) + 1)
    part = impression_parts(DayPaths(workspace / "data/raw", BROKEN))[0]
    pq.write_table(pq.read_table(part).drop(["clicked"]), part)
    # The same first day, run without Airflow and without interruption: what the killed run must match.
    reference = make_workspace(base / "reference", ops_params())
    simulate(reference, DAYS[0], days=1)
    reference_run = subprocess.Popen([sys.executable, "-m", "pipeline", "repro", "--workspace", str(reference),
                                      "--day", DAYS[0]], cwd=reference, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
    killer = TrainKiller(workspace)
    webhook = Webhook()
    alerts = {"AIRFLOW_CONN_SIEVE_ALERTS": json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                      "port": webhook.port, "schema": "alerts"})}
    with AirflowServices(base / "airflow", workspace, env=alerts) as airflow:
        for dag_id in ("sieve_retrain", "sieve_raw_landed"):
            airflow.wait_for_dag(dag_id)
            airflow.airflow("dags", "unpause", dag_id)
        killer.start()
        # The backfill's dates are the data intervals' starts: the days. Three runs may be active at once.
        airflow.airflow("backfill", "create", "--dag-id", "sieve_retrain", "--from-date", BACKFILLED[0],
                        "--to-date", BACKFILLED[-1], "--max-active-runs", "3")
        # Beside the backfill: the fourth day lands, and its announcement triggers a retrain of it.
        airflow.airflow("dags", "trigger", "sieve_raw_landed", "--conf", json.dumps({"day": LANDED}))
        # The scheduler creates it once the backfill's runs are done (the DAG's max_active_runs is 1:
        # "Asset-triggered Dags at max_active_runs, deferring"), so the wait covers three runs.
        airflow.wait_for(lambda: any(r["run_type"] == "asset_triggered" for r in airflow.runs("sieve_retrain")),
                         1200, "the landed day's retrain run")
        # Then the broken day lands (a separate event, after the first one's run was created: its own run).
        airflow.airflow("dags", "trigger", "sieve_raw_landed", "--conf", json.dumps({"day": BROKEN}))
        airflow.wait_for_runs("sieve_raw_landed", 2, timeout=300)
        runs = airflow.wait_for_runs("sieve_retrain", 5, timeout=1800)
        killer.stop.set()
        tasks = {r["dag_run_id"]: airflow.task_instances("sieve_retrain", r["dag_run_id"]) for r in runs}
        landed = airflow.runs("sieve_raw_landed")
    webhook.close()
    out, _ = reference_run.communicate(timeout=900)
    assert reference_run.returncode == 0, out
    return {"workspace": workspace, "reference": reference, "runs": runs, "tasks": tasks, "landed": landed,
            "killed": killer.killed, "after_kill": killer.after_kill, "logs": airflow.logs_tail(),
            "posted": webhook.received}


def run_days(deployment) -> dict[str, dict]:
    """Each run by the day it processed (the lease log says which day each run held the workspace for)."""
    by_holder = {record["holder"]: record["day"] for record in lease.history(deployment["workspace"])}
    return {by_holder[r["dag_run_id"]]: r for r in deployment["runs"]}


def test_backfill_runs_each_day_on_its_own_data_in_order(deployment):
    backfill = [r for r in deployment["runs"] if r["run_type"] == "backfill"]
    assert len(backfill) == 3
    days = run_days(deployment)
    assert all(run["state"] == "success" for day, run in days.items() if day != BROKEN), deployment["runs"]
    for day in BACKFILLED:
        run = days[day]
        assert run["run_type"] == "backfill"
        # Its data interval is its day, and what it validated is that day's data.
        assert run["data_interval_start"].startswith(day)
        summary = json.loads((deployment["workspace"] / f"work/validate/dt={day}/summary.json").read_text())
        assert summary["success"] and summary["day"] == day
    # Processed in order: the lease went to the days one after another, earliest first.
    assert [r["day"] for r in lease.history(deployment["workspace"])][:3] == BACKFILLED
    promoted = [p["day"] for p in champions.history(deployment["workspace"] / "registry")]
    assert promoted[0] == DAYS[0]
    # Each backfilled day trained on its own window, the days before it and itself (its commit keeps it).
    for k, day in enumerate(BACKFILLED):
        committed = subprocess.run(["git", "show", f"sieve/day/{day}:run/train_window.json"], check=True,
                                   cwd=deployment["workspace"], capture_output=True, text=True)
        window = json.loads(committed.stdout)
        assert window["days"] == BACKFILLED[:k + 1] and window["left_out"] == [], window


def test_concurrent_runs_take_turns_and_keep_their_own_outputs(deployment):
    runs = deployment["runs"]
    # Runs were active at the same time (the backfill let three run; the landed day's came beside it)...
    spans = sorted((r["start_date"], r["end_date"]) for r in runs)
    assert any(later_start < earlier_end for (_, earlier_end), (later_start, _) in zip(spans, spans[1:]))
    # ... but their work in the workspace never overlapped: one lease at a time, each given back.
    held = lease.history(deployment["workspace"])
    assert sorted(r["day"] for r in held) == [*DAYS, BROKEN] and not any(r["forced"] for r in held)
    assert all(a["released_at"] <= b["acquired_at"] for a, b in zip(held, held[1:]))
    assert lease.read(deployment["workspace"])["holder"] is None
    # Each run evaluated its own day's candidate: the metrics left are the last good day's.
    metrics = json.loads((deployment["workspace"] / "work/evaluate/metrics.json").read_text())
    assert metrics["day"] == LANDED
    promoted = champions.history(deployment["workspace"] / "registry")
    assert {p["day"] for p in promoted} <= set(DAYS) and promoted[0]["day"] == DAYS[0]


def test_killed_train_leaves_nothing_half_written_and_the_retry_matches_an_uninterrupted_run(deployment):
    killed = deployment["killed"]
    assert killed is not None, "no train process was caught mid-way\n" + deployment["logs"]
    # Right after the kill: no model and no metrics (DVC removed the old ones, the new were not written).
    assert deployment["after_kill"] == {"model": False, "metrics": False}
    first = run_days(deployment)[DAYS[0]]
    train = [t for t in deployment["tasks"][first["dag_run_id"]] if t["task_id"] == "train"][0]
    assert train["state"] == "success" and train["try_number"] == 2
    assert first["state"] == "success"
    # The retry resumed from the checkpoint and produced exactly the uninterrupted model.
    ours = [p for p in champions.history(deployment["workspace"] / "registry") if p["day"] == DAYS[0]][0]
    theirs = champions.current(deployment["reference"] / "registry")
    assert ours["model_id"] == theirs["model_id"]
    for name in ("ranker.safetensors",):
        mine = champions.model_dir(deployment["workspace"] / "registry", ours) / "ranker" / name
        assert mine.read_bytes() == (champions.model_dir(deployment["reference"] / "registry", theirs)
                                     / "ranker" / name).read_bytes()
    # No temporary folder of the killed write is left beside the outputs.
    assert not list((deployment["workspace"] / "work").glob(".train.*"))


def test_a_landed_day_triggers_a_retrain_of_that_day(deployment):
    assert [r["state"] for r in deployment["landed"]] == ["success", "success"]
    run = run_days(deployment)[LANDED]
    assert run["run_type"] == "asset_triggered" and run["state"] == "success"
    summary = json.loads((deployment["workspace"] / f"work/validate/dt={LANDED}/summary.json").read_text())
    assert summary["success"] and summary["day"] == LANDED


def test_a_failed_run_writes_a_failure_event_and_posts_it_to_the_webhook(deployment):
    run = run_days(deployment)[BROKEN]
    assert run["run_type"] == "asset_triggered" and run["state"] == "failed"
    states = {t["task_id"]: t["state"] for t in deployment["tasks"][run["dag_run_id"]]}
    assert states["validate"] == "failed" and states["train"] == "upstream_failed"
    assert states["release_workspace"] == "success"
    [event] = events.read_events(deployment["workspace"])
    assert (event["run_id"], event["task_id"], event["day"]) == (run["dag_run_id"], "validate", BROKEN)
    assert "clicked" in event["error"]
    assert deployment["posted"] == [("/alerts", event)]
