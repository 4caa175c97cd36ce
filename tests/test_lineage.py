"""Lineage records in a remote folder: the store, the champion after a run, the parent chain,
`lineage` on a registry, and restore's plan when the chain is broken. No DVC runs here."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from pipeline.release import lineage, champions, restore


def record(day: str, model_id: str, promoted: bool, parent: str | None = None, parent_day: str | None = None) -> dict:
    outs = {path: {"md5": hashlib.md5(f"{model_id}:{path}".encode()).hexdigest(), "hash": "md5"}
            for path in restore.report_outs(day).values()}
    return {
        "schema": lineage.SCHEMA, "day": day, "published_at": "2026-11-24T00:00:00+00:00",
        "data": {"day": day, "window_days": [], "days": [day], "raw": {}},
        "params": {"sha256": "p" * 64, "values": {}},
        "code": {"git_commit": "c" * 40, "git_dirty": False, "pipeline_sha256": "d" * 64},
        "estimator": {"estimator": "oof_loss", "source": "params"},
        "weight_transform": {"source": "params", "transform": {}},
        "parent": {"model_id": parent, "day": parent_day, "path": f"models/{parent}"} if parent else None,
        "candidate": {"model_id": model_id, "encoder": {"md5": "e" * 32 + ".dir", "hash": "md5"},
                      "ranker": {"md5": "r" * 32 + ".dir", "hash": "md5"}},
        "gate": {"decision": "BLESSED" if promoted else "NOT_BLESSED", "blessed": promoted, "reason": "why"},
        "promotion": {"day": day, "promoted": promoted, "reason": "blessed by the gate" if promoted else "gate: why"},
        "promoted": promoted,
        "outs": outs,
    }


@pytest.fixture
def store(tmp_path) -> lineage.RecordStore:
    """Day 1 promoted A, day 2 rejected (parent A), day 3 promoted C (parent A), day 4 promoted D whose
    parent X was never published."""
    store = lineage.RecordStore(str(tmp_path / "remote"))
    store.put(record("2026-11-01", "A", True))
    store.put(record("2026-11-02", "B", False, "A", "2026-11-01"))
    store.put(record("2026-11-03", "C", True, "A", "2026-11-01"))
    store.put(record("2026-11-04", "D", True, "X", "2026-10-31"))
    return store


def test_store_reads_back_what_it_wrote(store, tmp_path):
    assert store.days() == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert store.day("2026-11-02")["candidate"]["model_id"] == "B"
    assert store.model("C")["day"] == "2026-11-03"
    assert store.day("2026-12-01") is None and store.model("nope") is None
    # Only the records: no temporary files left beside them.
    names = sorted(p.name for p in (tmp_path / "remote" / "lineage").rglob("*") if p.is_file())
    assert names == sorted(["2026-11-01.json", "2026-11-02.json", "2026-11-03.json", "2026-11-04.json",
                            "A.json", "B.json", "C.json", "D.json"])


def test_a_republished_day_replaces_its_record(store):
    store.put(record("2026-11-02", "B2", True, "A", "2026-11-01"))
    assert store.day("2026-11-02")["candidate"]["model_id"] == "B2"
    assert store.model("B")["candidate"]["model_id"] == "B"  # the earlier run's model keeps its record


def test_champion_after_a_run(store):
    assert lineage.champion_of(store.day("2026-11-01")) == {"model_id": "A", "day": "2026-11-01", "source": "candidate"}
    assert lineage.champion_of(store.day("2026-11-02")) == {"model_id": "A", "day": "2026-11-01", "source": "parent"}
    assert lineage.champion_of(record("2026-11-01", "Z", False)) is None


def test_chain_follows_parents_and_stops_at_an_unpublished_one(store):
    records, unpublished = lineage.chain(store, "C")
    assert [r["candidate"]["model_id"] for r in records] == ["C", "A"] and unpublished is None
    records, unpublished = lineage.chain(store, "D")
    assert [r["candidate"]["model_id"] for r in records] == ["D"] and unpublished == "X"
    assert lineage.chain(store, "nope") == ([], "nope")


def test_resolve_url():
    assert lineage.resolve_url("s3://bucket/sieve", "/ws") == "s3://bucket/sieve"
    assert lineage.resolve_url("dvc-remote", "/ws") == "/ws/dvc-remote"
    assert lineage.resolve_url("../backup", "/srv/ws") == "/srv/backup"
    assert lineage.resolve_url("/abs/remote", "/ws") == "/abs/remote"
    with pytest.raises(ValueError, match="remote section"):
        lineage.remote_settings({"remote": {"name": "x"}}, "/ws")


def workspace_with_registry(tmp_path: Path, store: lineage.RecordStore, events: list[dict]) -> Path:
    ws = tmp_path / "ws"
    (ws / "registry").mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump({"registry": {"dir": "registry"},
                                                    "remote": {"name": "r", "url": store.url}}))
    (ws / "registry" / champions.HISTORY).write_text("".join(json.dumps(e) + "\n" for e in events))
    live = champions.live_promotions(events)[-1]
    (ws / "registry" / champions.POINTER).write_text(json.dumps(live))
    return ws


def promotion(model_id: str, day: str) -> dict:
    return {"event": "promote", "model_id": model_id, "day": day, "path": f"models/{model_id}"}


def test_lineage_of_the_champion_marks_rolled_back_models(store, tmp_path):
    events = [promotion("A", "2026-11-01"), promotion("C", "2026-11-03"),
              {"event": "rollback", "model_id": "A", "day": "2026-11-01", "path": "models/A", "previous": "C",
               "previous_day": "2026-11-03"}]
    ws = workspace_with_registry(tmp_path, store, events)
    shown = lineage.run(ws)
    assert shown["champion"] == "A" and [c["model_id"] for c in shown["chain"]] == ["A"]
    shown = lineage.run(ws, model="C")
    assert [(c["model_id"], c["rolled_back"]) for c in shown["chain"]] == [("C", True), ("A", False)]
    text = "\n".join(lineage.format_text(shown))
    assert "model C [rolled back]" in text and "parent A [champion]" in text
    shown = lineage.run(ws, day="2026-11-02")
    assert shown["run"]["model_id"] == "B" and shown["served_after"]["source"] == "parent"
    assert [c["model_id"] for c in shown["chain"]] == ["A"]
    with pytest.raises(lineage.LineageError, match="2026-12-01"):
        lineage.run(ws, day="2026-12-01")
    with pytest.raises(lineage.LineageError, match="nope"):
        lineage.run(ws, model="nope")


def test_restore_plan_needs_the_parent_champion_record(store):
    # Day 4's own candidate serves: no parent needed.
    _, champion, owner, wanted = restore.plan(store, "2026-11-04")
    assert champion["model_id"] == "D" and owner["day"] == "2026-11-04"
    assert wanted["models/D/ranker"]["md5"] == "r" * 32 + ".dir"
    # Day 2 was rejected: its champion's files come from day 1's record.
    _, champion, owner, wanted = restore.plan(store, "2026-11-02")
    assert champion == {"model_id": "A", "day": "2026-11-01", "source": "parent"} and owner["day"] == "2026-11-01"
    assert set(wanted) == {*restore.report_outs("2026-11-02"), "models/A/encoder", "models/A/ranker"}
    # A rejected day whose parent was never published cannot give its champion back.
    store.put(record("2026-11-05", "E", False, "X", "2026-10-31"))
    with pytest.raises(restore.RestoreError, match="model X has no published record"):
        restore.plan(store, "2026-11-05")
    with pytest.raises(restore.RestoreError, match="no published record for 2026-12-01"):
        restore.plan(store, "2026-12-01")
