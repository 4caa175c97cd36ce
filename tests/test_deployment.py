"""The scale-out deployment run for real: Airflow on a PostgreSQL metadata database with the
CeleryExecutor and a Redis broker, the api-server, scheduler, dag-processor and triggerer, and two
Celery workers: `worker-a` on the default queue, `worker-b` on the default queue and the train queue
(`dag.train_queue: gpu`, as docker/docker-compose.yaml routes training to its GPU worker). All are local
processes from Debian's packages and the project's venv (tests/deployment_services.py).

A three-day `airflow backfill create` runs with `importance.shards: 2`, so each day's two shards are
mapped over both workers. In the middle of the second day, worker-a is SIGKILLed (its whole process
tree, as when its machine is lost) while it scores a shard: the scheduler notices the task's heartbeat
stopped and retries it on worker-b. The same three days are run one by one with `python -m pipeline
repro`, without Airflow, in a second workspace: the champion history and the retried shard's outputs
must be the same there.

One deployment serves every test here; a summary of what it did is printed at the end of the test
session (conftest.py: the `deployment_log` property).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from airflow_services import AirflowServices
from conftest import ROOT, make_workspace, simulate, tiny_params
from deployment_services import CeleryDeployment, Postgres, Redis, celery_settings
from pipeline.release import champions
from pipeline.runplan import SHARD_STAGE

pytestmark = pytest.mark.slow

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
KILLED_DAY = DAYS[1]
TRAIN_QUEUE = "gpu"
WORKERS = {"worker-a": ["default"], "worker-b": ["default", TRAIN_QUEUE]}
KILLED_WORKER = "worker-a"


def deployment_params() -> dict:
    params = tiny_params()
    params["dag"].update(start_date="2030-01-01", train_queue=TRAIN_QUEUE, retries=2, retry_delay_seconds=2,
                         retry_backoff_multiplier=1.5, max_retry_delay_seconds=5,
                         lease={"poke_seconds": 5, "timeout_minutes": 30, "stale_after_seconds": 60})
    params["importance"]["shards"] = 2
    return params


class WorkerKiller(threading.Thread):
    """Kills a worker once it has been scoring a shard of `day` for a while (mid-task): the worker's
    main process and everything under it."""

    def __init__(self, deployment: CeleryDeployment, worker: str, day: str, after_seconds: float = 2.0):
        super().__init__(daemon=True)
        self.deployment, self.worker, self.day, self.after = deployment, worker, day, after_seconds
        self.killed: dict | None = None
        self.stop = threading.Event()

    def shard_process(self):
        root = self.deployment.procs.get(self.worker)
        if root is None:
            return None
        try:
            below = psutil.Process(root.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for proc in below:
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if "repro" in cmd and self.day in cmd and any(a.startswith(f"{SHARD_STAGE}@") for a in cmd):
                return proc, next(a for a in cmd if a.startswith(f"{SHARD_STAGE}@"))
        return None

    def run(self):
        while not self.stop.is_set() and self.killed is None:
            found = self.shard_process()
            if found is not None:
                proc, stage = found
                try:
                    running = time.time() - proc.create_time()
                    alive = proc.is_running()
                except psutil.NoSuchProcess:
                    continue
                if alive and running >= self.after:
                    pids = self.deployment.kill_worker(self.worker)
                    self.killed = {"stage": stage, "shard": int(stage.split("@")[1]), "after_seconds": round(running, 1),
                                   "pids": len(pids), "at": time.strftime("%H:%M:%S")}
            time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree_digest(folder: Path) -> dict[str, str]:
    """The bytes of every output file under `folder`. DVC's .gitignore is left out: it lists the outputs
    in the order they were written, which the kill changes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".gitignore"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    base = tmp_path_factory.mktemp("deployment")
    workspace = make_workspace(base / "ws", deployment_params())
    simulate(workspace, DAYS[0], days=len(DAYS))
    # The same days, one by one, without Airflow: what the deployment's champion history must equal.
    reference = make_workspace(base / "reference", deployment_params())
    simulate(reference, DAYS[0], days=len(DAYS))
    script = "; ".join(f"{sys.executable} -m pipeline repro --workspace {reference} --day {day}" for day in DAYS)
    # Its output goes to a file: a pipe nobody reads until the end would stall it once full.
    reference_log = base / "reference.log"
    with open(reference_log, "w") as log:
        reference_run = subprocess.Popen(["bash", "-c", f"set -e; {script}"], cwd=reference, stdout=log,
                                         stderr=subprocess.STDOUT)
    postgres, redis = Postgres(), Redis()
    try:
        postgres.start()
        redis.start()
        started = time.monotonic()
        with CeleryDeployment(base / "airflow", workspace, postgres, redis, WORKERS) as airflow:
            airflow.wait_for_dag("sieve_retrain")
            airflow.airflow("dags", "unpause", "sieve_retrain")
            killer = WorkerKiller(airflow, KILLED_WORKER, KILLED_DAY)
            killer.start()
            airflow.airflow("backfill", "create", "--dag-id", "sieve_retrain", "--from-date", DAYS[0],
                            "--to-date", DAYS[-1], "--max-active-runs", "1")
            runs = airflow.wait_for_runs("sieve_retrain", len(DAYS), timeout=2700)
            killer.stop.set()
            tasks = {r["dag_run_id"]: airflow.task_instances("sieve_retrain", r["dag_run_id"]) for r in runs}
            seconds = time.monotonic() - started
            # What the metadata database holds, read from PostgreSQL itself.
            db_runs = postgres.psql("SELECT run_id, run_type, state, to_char(data_interval_start, 'YYYY-MM-DD') "
                                    "FROM dag_run WHERE dag_id = 'sieve_retrain' ORDER BY logical_date")
            columns = "run_id, task_id, map_index, try_number, hostname, queue, state, start_date"
            db_tries = postgres.psql(
                f"SELECT {columns} FROM task_instance WHERE dag_id = 'sieve_retrain' UNION ALL "
                f"SELECT {columns} FROM task_instance_history WHERE dag_id = 'sieve_retrain' ORDER BY start_date")
            logs = airflow.logs_tail()
        our_pids = [*airflow.started.values(), postgres.server_pid(), redis.proc.pid]
    finally:
        redis.stop()
        postgres.stop()
    # Stopped: every process the test started, and only those (the services it found running stay).
    assert not [pid for pid in our_pids if alive(pid)]
    assert reference_run.wait(timeout=1800) == 0, reference_log.read_text()[-5000:]
    # Kept beside the workspaces: what to read when a test here fails.
    (base / "deployment.json").write_text(json.dumps({"db_runs": db_runs, "db_tries": db_tries,
                                                      "killed": killer.killed}, indent=1))
    return {"workspace": workspace, "reference": reference, "runs": runs, "tasks": tasks, "killed": killer.killed,
            "db_runs": db_runs, "db_tries": db_tries, "logs": logs, "seconds": seconds,
            "servers": {"postgres": postgres.port, "redis": redis.port}}


def tries(deployment) -> list[dict]:
    """Every try of every task, with the day its run processed (the run's data interval)."""
    days = {run_id: day for run_id, _, _, day in deployment["db_runs"]}
    keys = ("run_id", "task_id", "map_index", "try_number", "hostname", "queue", "state", "start")
    return [{**dict(zip(keys, row)), "day": days[row[0]]} for row in deployment["db_tries"]]


@pytest.fixture(scope="module")
def summary(deployment) -> str:
    lines = [f"backfill of {len(DAYS)} days on CeleryExecutor + PostgreSQL + Redis: {deployment['seconds']:.0f} s",
             "dag_run rows in PostgreSQL:"]
    lines += [f"  {' | '.join(row)}" for row in deployment["db_runs"]]
    lines.append("task tries in PostgreSQL (task_instance + task_instance_history) by start time, where they ran:")
    for t in tries(deployment):
        shard = f"[{t['map_index']}]" if t["map_index"] != "-1" else ""
        lines.append(f"  {t['start'][11:19]} {t['day']} {t['task_id']}{shard} try {t['try_number']} on {t['hostname']} "
                     f"(queue {t['queue']}): {t['state']}")
    lines.append(f"killed: {KILLED_WORKER} while it ran {deployment['killed']}")
    return "\n".join(lines)


def test_the_backfill_runs_every_day_and_postgres_holds_the_runs(deployment, summary, record_property):
    record_property("deployment_log", summary)
    api = [(r["dag_run_id"], r["run_type"], r["state"], r["data_interval_start"][:10]) for r in deployment["runs"]]
    assert [tuple(row) for row in deployment["db_runs"]] == api, summary
    assert [row[1:3] for row in api] == [("backfill", "success")] * len(DAYS), summary
    assert [row[3] for row in api] == DAYS


def test_one_run_spreads_its_tasks_over_both_workers(deployment, summary):
    first = [t for t in tries(deployment) if t["day"] == DAYS[0]]
    assert {t["hostname"] for t in first} == set(WORKERS), summary
    shards = {t["map_index"]: t["hostname"] for t in first if t["task_id"] == SHARD_STAGE}
    assert sorted(shards) == ["0", "1"] and set(shards.values()) == set(WORKERS), summary
    # Training went to the train queue, so to the worker listening on it, every day.
    trains = [t for t in tries(deployment) if t["task_id"] == "train"]
    assert len(trains) == len(DAYS), summary
    assert all(t["queue"] == TRAIN_QUEUE and t["hostname"] == "worker-b" and t["state"] == "success" for t in trains)


def test_the_killed_workers_task_is_retried_on_the_other_worker(deployment, summary):
    killed = deployment["killed"]
    assert killed is not None, f"{KILLED_WORKER} never ran a shard of {KILLED_DAY}\n{summary}\n{deployment['logs']}"
    shard = str(killed["shard"])
    attempts = [t for t in tries(deployment) if t["day"] == KILLED_DAY and t["task_id"] == SHARD_STAGE
                and t["map_index"] == shard]
    assert [(t["try_number"], t["hostname"], t["state"]) for t in attempts] == [
        ("1", KILLED_WORKER, "failed"), ("2", "worker-b", "success")], summary
    # Nothing ran on the dead worker after it was killed.
    later = [t for t in tries(deployment) if t["day"] == DAYS[2]]
    assert {t["hostname"] for t in later} == {"worker-b"}, summary


def test_the_champion_history_and_the_retried_outputs_equal_running_the_days_one_by_one(deployment, summary):
    ours = [(p["day"], p["model_id"]) for p in champions.history(deployment["workspace"] / "registry")]
    theirs = [(p["day"], p["model_id"]) for p in champions.history(deployment["reference"] / "registry")]
    assert ours == theirs and ours, summary
    for day in DAYS:
        folder = Path("work/importance_shards") / f"dt={day}"
        mine, reference = tree_digest(deployment["workspace"] / folder), tree_digest(deployment["reference"] / folder)
        assert mine and mine == reference, f"{folder} differs from the one-by-one run"


def test_the_test_deploys_what_the_compose_file_sets(tmp_path):
    """Every Airflow setting of docker-compose.yaml's services is set here too, with the same value
    where it is not a secret or an address (so this test runs what compose deploys)."""
    compose = yaml.safe_load((ROOT / "docker/docker-compose.yaml").read_text())["x-airflow-env"]
    env = {**AirflowServices(tmp_path / "airflow", tmp_path).env, **celery_settings("db", "backend", "broker")}
    assert not [key for key in compose if key.startswith("AIRFLOW__") and key not in env]
    for key, value in compose.items():
        if "${" not in value and key.startswith("AIRFLOW__"):
            assert env[key] == value, key
    assert env["SIEVE_WORKSPACE"] and compose["SIEVE_WORKSPACE"] and env["HF_HUB_OFFLINE"] == compose["HF_HUB_OFFLINE"]
