"""The scale-out deployment as local processes, for tests: PostgreSQL and Redis from Debian's packages
on loopback, and Airflow with the CeleryExecutor (api-server, scheduler, dag-processor, triggerer and
two Celery workers), laid out as docker/docker-compose.yaml deploys them. Every secret is generated
here and reaches the services through their environment only. Stops only what it started."""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from airflow_services import BIN, AirflowServices, free_port, http_ok

TESTS = Path(__file__).resolve().parent


def postgres_bin() -> Path:
    """Debian's server programs: /usr/lib/postgresql/<version>/bin, the newest version installed."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise RuntimeError("no PostgreSQL server: apt-get install postgresql (make test does)")
    return versions[-1].parent


class Postgres:
    """A cluster of its own (initdb) in a temporary folder, on 127.0.0.1 and a free port, with password
    authentication. As root, the server runs as Debian's `postgres` user: it refuses to run as root."""

    def __init__(self, user: str = "airflow", database: str = "airflow"):
        self.user, self.database = user, database
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.bin = postgres_bin()
        # Not under pytest's tmp folders: their parents are root's alone, and the server user must enter.
        self.dir = Path(tempfile.mkdtemp(prefix="sieve-postgres-"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str, env: dict | None = None) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if result.returncode:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")

    def start(self) -> "Postgres":
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            owner = pwd.getpwnam("postgres")
            for path in (self.dir, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale")
        pwfile.unlink()
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.psql(f"CREATE DATABASE {self.database}", database="postgres")
        return self

    def server_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def psql(self, sql: str, database: str | None = None) -> list[list[str]]:
        """Rows of a query, through psql over TCP with the password (as any client would)."""
        result = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database or self.database,
             "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "\t", "-c", sql],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": self.password}, timeout=60)
        if result.returncode:
            raise RuntimeError(f"psql {sql!r} exited {result.returncode}: {result.stderr}")
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """redis-server on 127.0.0.1 and a free port, with a password, keeping nothing on disk."""

    def __init__(self):
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sieve-redis-"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Redis":
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("no redis-server: apt-get install redis-server (make test does)")
        # The password goes in through stdin's config, not the command line other users can read.
        self.proc = subprocess.Popen([server, "-"], stdin=subprocess.PIPE, stdout=open(self.dir / "server.log", "w"),
                                     stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True, text=True)
        self.proc.stdin.write(f"port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\nsave \"\"\n"
                              f"appendonly no\ndir {self.dir}\n")
        self.proc.stdin.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "ping"], capture_output=True,
                                  text=True, env={**os.environ, "REDISCLI_AUTH": self.password})
            if ping.stdout.strip() == "PONG":
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"redis-server did not answer\n{(self.dir / 'server.log').read_text()}")

    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class CeleryDeployment(AirflowServices):
    """Airflow on PostgreSQL with the CeleryExecutor and Redis: api-server, scheduler, dag-processor,
    triggerer, and one Celery worker per entry of `workers` ({name: queues}), each with concurrency 1.
    A worker's name is the hostname its task instances record, as separate machines' would."""

    SERVICES = (*AirflowServices.SERVICES, "triggerer")

    def __init__(self, home: Path, workspace: Path, postgres: Postgres, redis: Redis,
                 workers: dict[str, list[str]], env: dict | None = None):
        self.health_port = free_port()
        celery = {**celery_settings(postgres.url(), postgres.url("db+postgresql"), redis.url()),
                  "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.health_port)}
        super().__init__(home, workspace, env={**celery, **(env or {})})
        self.workers = workers

    def start(self) -> "CeleryDeployment":
        super().start()
        self.wait_for(self.scheduler_healthy, 180, "the scheduler's health check (as compose's healthcheck asks it)")
        for name in self.workers:
            self.start_worker(name)
        self.wait_for(lambda: self.workers_online() >= set(self.workers), 180, "the Celery workers to answer")
        return self

    def scheduler_healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.health_port}/health")

    def start_worker(self, name: str) -> None:
        self.spawn(name, ["celery", "worker", "--queues", ",".join(self.workers[name]), "--concurrency", "1",
                          "--celery-hostname", f"{name}@%h"],
                   env={"SIEVE_WORKER_NAME": name,
                        # Each worker serves its task logs on its own port, as on its own machine.
                        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})

    def workers_online(self) -> set[str]:
        result = subprocess.run([str(BIN / "celery"), "--app", "airflow.providers.celery.executors.celery_executor.app",
                                 "inspect", "ping", "--timeout", "5"], env=self.env, capture_output=True, text=True,
                                timeout=120)
        return {name for name in self.workers if f"{name}@" in result.stdout}

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker and every process under it, as when its machine is lost; the pids killed."""
        proc = self.procs.pop(name)
        tree = [proc.pid, *[p.pid for p in psutil.Process(proc.pid).children(recursive=True)]]
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        return tree


def celery_settings(database_url: str, result_backend: str, broker_url: str) -> dict[str, str]:
    """What docker-compose.yaml's x-airflow-env sets beyond AirflowServices' own settings (the execution
    API URL, JWT secret, folders), with fresh secrets, and the test's own timing."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CORE__FERNET_KEY": fernet_key(),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__CORE__PARALLELISM": "4",
        # A worker that dies stops its tasks' heartbeats: the scheduler fails them (and so retries them)
        # after this long rather than the default 5 minutes.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_hostname.hostname",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
