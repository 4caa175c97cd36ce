"""Structured run events (a failed run, for now): one JSON line each, and an optional webhook post.

events/failures.jsonl in the workspace gets one line per failed task whose run is now failing:
{"event": "task_failed", "dag_id", "run_id", "task_id", "map_index", "try_number", "day",
 "error", "log_url", "at"}. The same object is the webhook's JSON body.
"""
from __future__ import annotations

import fcntl
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

FAILURES = Path("events") / "failures.jsonl"


def failure_event(*, dag_id: str, run_id: str, task_id: str, map_index: int | None, try_number: int | None,
                  day: str | None, error: str, log_url: str | None) -> dict:
    return {"event": "task_failed", "dag_id": dag_id, "run_id": run_id, "task_id": task_id,
            "map_index": map_index if map_index is not None and map_index >= 0 else None,
            "try_number": try_number, "day": day, "error": error, "log_url": log_url,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def append_event(workspace: str | Path, event: dict, path: Path = FAILURES) -> Path:
    """Append one line; an flock keeps lines of tasks failing at once from interleaving."""
    target = Path(workspace) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
    return target


def read_events(workspace: str | Path, path: Path = FAILURES) -> list[dict]:
    target = Path(workspace) / path
    if not target.is_file():
        return []
    return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line.strip()]


def post_json(url: str, body: dict, timeout: float, headers: dict | None = None) -> int:
    """POST the event; returns the HTTP status. Raises on a network error or a non-2xx answer."""
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status
