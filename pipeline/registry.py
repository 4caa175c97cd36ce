"""The champion registry: promoted models, the champion pointer and the promotion history.

registry/
  champion.json         the pointer: which promoted model serves now (replaced atomically)
  history.jsonl         one line per promotion, oldest first
  models/<model_id>/    encoder/ and ranker/, written once and never changed
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pipeline.atomic import atomic_dir, dumps_json, write_bytes_atomic

POINTER = "champion.json"
HISTORY = "history.jsonl"
MODELS = "models"


def current(registry_dir: str | Path) -> dict | None:
    pointer = Path(registry_dir) / POINTER
    return json.loads(pointer.read_text()) if pointer.is_file() else None


def history(registry_dir: str | Path) -> list[dict]:
    path = Path(registry_dir) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def baseline_for(registry_dir: str | Path, day: str) -> dict | None:
    """The champion that served before `day`: the last promotion of an earlier day.

    Keyed on the day rather than on 'now', so a rerun or backfill of a day compares against the
    same baseline as its first run did.
    """
    earlier = [entry for entry in history(registry_dir) if entry["day"] < day]
    if not earlier:
        return None
    last = earlier[-1]
    return {"model_id": last["model_id"], "day": last["day"], "path": last["path"]}


def model_dir(registry_dir: str | Path, entry: dict) -> Path:
    return Path(registry_dir) / entry["path"]


def content_hash(*folders: Path) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(file.relative_to(folder).as_posix().encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


@contextmanager
def locked(registry_dir: Path):
    registry_dir.mkdir(parents=True, exist_ok=True)
    with open(registry_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def promote(registry_dir: str | Path, day: str, encoder_dir: Path, ranker_dir: Path) -> dict:
    """Copy the candidate in, then switch the pointer to it in one atomic rename."""
    registry_dir = Path(registry_dir)
    model_id = f"{day}-{content_hash(encoder_dir, ranker_dir)[:12]}"
    relative = f"{MODELS}/{model_id}"
    with locked(registry_dir):
        target = registry_dir / relative
        if not target.exists():
            with atomic_dir(target) as tmp:
                shutil.copytree(encoder_dir, tmp / "encoder")
                shutil.copytree(ranker_dir, tmp / "ranker")
        entry = {"model_id": model_id, "day": day, "path": relative,
                 "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_bytes_atomic(registry_dir / POINTER, dumps_json(entry).encode())
        with open(registry_dir / HISTORY, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry
