"""The hostname Airflow records for a task instance (core.hostname_callable) in the deployment test:
each Celery worker runs on this one machine, so it is named by SIEVE_WORKER_NAME as its own machine
would be by its hostname."""
import os
import socket


def hostname() -> str:
    return os.environ.get("SIEVE_WORKER_NAME") or socket.getfqdn()
