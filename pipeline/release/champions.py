"""The champion registry: promoted models, the champion pointer and its history.

registry/
  champion.json         the pointer: which promoted model serves now (replaced atomically)
  history.jsonl         one line per pointer switch, oldest first: a promotion
                        ({"event": "promote", model_id, day, path, promoted_at}) or a rollback
                        ({"event": "rollback", model_id, day, path, previous, previous_day, rolled_back_at})
  models/<model_id>/    encoder/ and ranker/, written once and never changed (a rollback keeps them)

A rollback undoes every promotion made after the restored model's (latest) promotion. The
promotions not undone are the "live" ones; the last live promotion is the champion, so a second
rollback goes one further back instead of flipping between two models.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pipeline.atomic import atomic_dir, dumps_json, write_bytes_atomic

POINTER = "champion.json"
HISTORY = "history.jsonl"
MODELS = "models"
PROMOTE = "promote"
ROLLBACK = "rollback"


class RollbackError(Exception):
    """A rollback that cannot be done: nothing to roll back to, or the model already serves."""


class UnknownModel(RollbackError):
    """A rollback to a model id this registry never promoted."""


def current(registry_dir: str | Path) -> dict | None:
    pointer = Path(registry_dir) / POINTER
    return json.loads(pointer.read_text()) if pointer.is_file() else None


def history(registry_dir: str | Path) -> list[dict]:
    """Every pointer switch, oldest first (lines written before rollbacks existed are promotions)."""
    path = Path(registry_dir) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def event_of(entry: dict) -> str:
    return entry.get("event", PROMOTE)


def live_promotions(events: list[dict]) -> list[dict]:
    """The promotions no rollback has undone, oldest first; the last one is the champion.

    Replays the history: a promotion is live when made; a rollback to model M undoes every
    promotion after M's latest one and makes that one live again (so restoring a model that was
    itself rolled back, a roll forward, works too).
    """
    promotions: list[dict] = []
    live: list[bool] = []
    for entry in events:
        if event_of(entry) == PROMOTE:
            promotions.append(entry)
            live.append(True)
        elif event_of(entry) == ROLLBACK:
            matches = [i for i, p in enumerate(promotions) if p["model_id"] == entry["model_id"]]
            if not matches:
                continue  # restored a model with no promotion on record: nothing to undo
            for i in range(matches[-1] + 1, len(promotions)):
                live[i] = False
            live[matches[-1]] = True
    return [p for p, alive in zip(promotions, live) if alive]


def rolled_back(registry_dir: str | Path, model_id: str) -> bool:
    """Whether `model_id` was promoted and every promotion of it has since been rolled back."""
    events = history(registry_dir)
    promoted = any(event_of(e) == PROMOTE and e["model_id"] == model_id for e in events)
    return promoted and all(p["model_id"] != model_id for p in live_promotions(events))


def baseline_for(registry_dir: str | Path, day: str) -> dict | None:
    """The champion that served before `day`: the last live promotion of an earlier day.

    Keyed on the day rather than on 'now', so a rerun or backfill of a day compares against the
    same baseline as its first run did. Promotions undone by a rollback are skipped: a rollback
    says that model should not have served, so no later day is measured against it (it is also
    where the pointer went back to). A rollback therefore changes the baseline of the days after
    the rolled-back model's day, and only those; run/baseline.json changes with it, so DVC reruns
    those days' evaluate and gate instead of serving a comparison with the withdrawn model.
    """
    earlier = [entry for entry in live_promotions(history(registry_dir)) if entry["day"] < day]
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


def model_id_for(day: str, encoder_dir: Path, ranker_dir: Path) -> str:
    """The id a candidate gets when promoted: its day and a hash of its files."""
    return f"{day}-{content_hash(encoder_dir, ranker_dir)[:12]}"


@contextmanager
def locked(registry_dir: Path):
    registry_dir.mkdir(parents=True, exist_ok=True)
    with open(registry_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def switch(registry_dir: Path, pointer: dict, event: dict) -> None:
    """Point champion.json at a model in one atomic rename, then record the switch (under the lock)."""
    write_bytes_atomic(registry_dir / POINTER, dumps_json(pointer).encode())
    with open(registry_dir / HISTORY, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def promote(registry_dir: str | Path, day: str, encoder_dir: Path, ranker_dir: Path) -> dict:
    """Copy the candidate in, then switch the pointer to it in one atomic rename."""
    registry_dir = Path(registry_dir)
    model_id = model_id_for(day, encoder_dir, ranker_dir)
    relative = f"{MODELS}/{model_id}"
    with locked(registry_dir):
        target = registry_dir / relative
        if not target.exists():
            with atomic_dir(target) as tmp:
                shutil.copytree(encoder_dir, tmp / "encoder")
                shutil.copytree(ranker_dir, tmp / "ranker")
        entry = {"model_id": model_id, "day": day, "path": relative, "promoted_at": now()}
        switch(registry_dir, entry, {"event": PROMOTE, **entry})
    return entry


def rollback_target(events: list[dict], serving: dict | None, to: str | None) -> dict:
    """The promotion to restore: the named model's latest, or the live one before the champion."""
    if serving is None:
        raise RollbackError("nothing to roll back to: the registry has no champion yet")
    promotions = [e for e in events if event_of(e) == PROMOTE]
    if to is not None:
        named = [p for p in promotions if p["model_id"] == to]
        if not named:
            known = ", ".join(dict.fromkeys(p["model_id"] for p in reversed(promotions))) or "none"
            raise UnknownModel(f"unknown model {to!r}: never promoted in this registry "
                               f"(promoted, newest first: {known})")
        if to == serving["model_id"]:
            raise RollbackError(f"model {to!r} is already the champion")
        return named[-1]
    earlier = [p for p in live_promotions(events) if p["model_id"] != serving["model_id"]]
    if not earlier:
        raise RollbackError(f"nothing to roll back to: {serving['model_id']} is the only live promotion "
                            "(every earlier one was rolled back or there is none)")
    return earlier[-1]


def rollback(registry_dir: str | Path, to: str | None = None, reason: str | None = None) -> dict:
    """Switch the pointer back to an earlier champion (or `to`), recording who served before.

    The rolled-back model's files stay in models/, so it can be restored with `to` later.
    Returns the history line written.
    """
    registry_dir = Path(registry_dir)
    with locked(registry_dir):
        serving = current(registry_dir)
        target = rollback_target(history(registry_dir), serving, to)
        folder = model_dir(registry_dir, target)
        missing = [part for part in ("encoder", "ranker") if not (folder / part).is_dir()]
        if missing:
            raise RollbackError(f"model {target['model_id']!r}: {folder} lacks {', '.join(missing)}/")
        at = now()
        pointer = {"model_id": target["model_id"], "day": target["day"], "path": target["path"],
                   "promoted_at": target.get("promoted_at"), "restored_at": at,
                   "restored_from": serving["model_id"]}
        event = {"event": ROLLBACK, "model_id": target["model_id"], "day": target["day"],
                 "path": target["path"], "previous": serving["model_id"], "previous_day": serving["day"],
                 "rolled_back_at": at}
        if reason:
            event["reason"] = reason
        switch(registry_dir, pointer, event)
    return event
