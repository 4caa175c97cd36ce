"""A real Airflow 3 deployment for tests: SQLite metadata database, LocalExecutor, and the
api-server, scheduler and dag-processor started as separate processes (and stopped: only these)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCKED_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def terminate_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a process started in its own session, and its children; SIGKILL them after `timeout`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class AirflowServices:
    SERVICES = ("api-server", "scheduler", "dag-processor")

    def __init__(self, home: Path, workspace: Path, parallelism: int = 3, env: dict | None = None):
        self.home, self.workspace = home, workspace
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, int] = {}  # every process started, by name: its pid (kept once it is gone)
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # LocalExecutor starts this many workers: few, on 2 cores.
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # Four processes share one SQLite file: wait up to a minute for its write lock rather than
            # SQLite's default 5 s, which a loaded 2-core machine can exceed ("database is locked").
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout=60",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-secret-" + str(self.port),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "SIEVE_WORKSPACE": str(workspace),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **(env or {}),
        }

    def airflow(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        for attempt in range(1, LOCKED_ATTEMPTS + 1):
            result = subprocess.run([str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True,
                                    timeout=timeout)
            # In WAL mode SQLite refuses a read transaction's upgrade to a write at once when another
            # process wrote meanwhile: no busy timeout helps. The command rolled back (backfill create
            # removes its partial runs for exactly this), so running it again is what a user would do.
            if not (result.returncode and "database is locked" in result.stdout + result.stderr
                    and attempt < LOCKED_ATTEMPTS):
                break
            time.sleep(2 * attempt)
        if check and result.returncode:
            raise AssertionError(f"airflow {' '.join(args)} exited {result.returncode}\n{result.stdout}\n"
                                 f"{result.stderr}\n{self.logs_tail()}")
        return result

    def start(self) -> "AirflowServices":
        self.airflow("db", "migrate")
        for name in self.SERVICES:
            self.spawn(name, ["api-server", "--port", str(self.port)] if name == "api-server" else [name])
        self.wait_for(self.api_ready, 180, "the api-server to answer")
        return self

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> None:
        """`airflow <args>` in its own session, logging to <home>/<name>.log."""
        log = open(self.home / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen([str(BIN / "airflow"), *args], env={**self.env, **(env or {})},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started[name] = self.procs[name].pid

    def api_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.port}/api/v2/monitor/health")

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v2/{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def wait_for_dag(self, dag_id: str, timeout: float = 240) -> None:
        def parsed():
            try:
                self.api("GET", f"dags/{dag_id}")
                return True
            except OSError:
                return False
        self.wait_for(parsed, timeout, f"the dag-processor to parse {dag_id}")

    def runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"dags/{dag_id}/dagRuns?limit=100&order_by=id")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        from urllib.parse import quote

        return self.api("GET", f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=200")[
            "task_instances"]

    def wait_for_runs(self, dag_id: str, count: int, timeout: float) -> list[dict]:
        """Wait until `count` runs exist and all have finished; the runs, oldest first."""
        def done():
            runs = self.runs(dag_id)
            return len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs)
        self.wait_for(done, timeout, f"{count} finished {dag_id} runs")
        return self.runs(dag_id)

    def wait_for(self, condition, timeout: float, what: str, every: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"airflow {name} exited {proc.returncode}\n{self.logs_tail()}")
            if condition():
                return
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs_tail()}")

    def logs_tail(self, chars: int = 3000) -> str:
        tails = []
        for name in self.started:
            path = self.home / f"{name}.log"
            if path.is_file():
                tails.append(f"--- {name}.log ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(tails)

    def stop(self) -> None:
        """Stop the processes this object started (each in its own session: its workers go too), the last
        started first: a Celery worker takes no task that a stopping scheduler would leave half-done."""
        for proc in reversed(list(self.procs.values())):
            terminate_group(proc, timeout=60)

    def __enter__(self) -> "AirflowServices":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class Webhook:
    """A real HTTP server on a free local port that keeps the JSON bodies posted to it."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self):
        self.server.shutdown()
