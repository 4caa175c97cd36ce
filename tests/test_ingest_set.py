"""Ingest mappings that set columns the log lacks: constants, derived ids, sessions, titles from fields."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.data.contract import DayPaths
from pipeline.data.ingest import command
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-01"


def params(chunk_rows: int = 500_000) -> dict:
    loaded = copy.deepcopy(load_params(REPO / "params.yaml"))
    loaded["ingest"]["chunk_rows"] = chunk_rows
    return loaded


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)


def minutes(m: float) -> str:
    return (pd.Timestamp(f"{DAY} 08:00", tz="UTC") + pd.Timedelta(minutes=m)).isoformat()


def bare_log(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A log with only a time, a customer, an item, a slot and a click, in two files, and a catalog
    without titles: everything else comes from the mapping."""
    rows = [  # customer, minute, item, slot, click
        ("ann", 0, "a", 1, 0), ("ann", 0, "b", 2, 1),        # one request (shared time and customer)
        ("bob", 0, "a", 1, 0),                               # same time, another customer
        ("ann", 10, "c", 1, 0), ("ann", 35, "a", 1, 1),      # 10 and 25 idle minutes: same session
        ("ann", 70, "b", 1, 0),                              # 35 idle minutes: a new session
        ("bob", 20, "c", 1, 1),
    ]
    frame = pd.DataFrame([{"when": minutes(m), "customer": c, "sku": i, "slot": s, "click": k}
                          for c, m, i, s, k in rows])
    first, second = tmp_path / "log-1.csv", tmp_path / "log-2.csv"
    frame.iloc[:4].to_csv(first, index=False)
    frame.iloc[4:].to_csv(second, index=False)
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame({"sku": ["a", "b", "c"], "name": ["Red shoe", "", None], "dept": ["Shoes", "Bags", None],
                  "aisle": ["Running", None, None], "maker": ["Acme", "Bolt", "Acme"]}).to_csv(catalog, index=False)
    return first, second, catalog


MAPPING = {
    "columns": {"when": "ts", "customer": "user_id", "sku": "item_id", "slot": "position", "click": "clicked"},
    "catalog_columns": {"sku": "item_id", "name": "title"},
    "set": {
        "request_id": {"hash": ["ts", "user_id"]},
        "event_id": {"row": "shop"},
        "session_id": {"session": {"user": "user_id", "gap_minutes": 30}},
        "surface": "recommend",
        "purchased": 0,
    },
    "catalog_set": {
        "title": {"template": "{maker} item {item_id} ({dept})"},
        "category": {"join": ["dept", "aisle"], "sep": ">"},
    },
}


def write_mapping(path: Path, mapping: dict) -> Path:
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


def test_constants_ids_sessions_and_titles_come_from_the_mapping(tmp_path):
    first, second, catalog = bare_log(tmp_path)
    out = tmp_path / "out"
    # Two rows a chunk: requests and sessions span chunks and files.
    command.run([str(first), str(second)], str(catalog), out, params(chunk_rows=2),
                write_mapping(tmp_path / "m.yaml", MAPPING))
    rows = pd.read_parquet(DayPaths(out, DAY).impressions_dir)
    # Event ids: the row's place in its file (a prefix per file keeps two files' ids apart).
    assert rows.event_id.tolist() == ["shop:1", "shop:2", "shop:3", "shop:4", "shop:1", "shop:2", "shop:3"]
    assert set(rows.surface) == {"recommend"} and set(rows.purchased) == {0}
    key = list(zip(rows.user_id, rows.ts.dt.strftime("%H:%M"), rows.item_id))
    by = dict(zip(key, zip(rows.request_id, rows.session_id)))
    # Requests: rows sharing a time and a customer, and only those.
    assert by[("ann", "08:00", "a")][0] == by[("ann", "08:00", "b")][0]
    assert by[("bob", "08:00", "a")][0] != by[("ann", "08:00", "a")][0]
    assert len(set(rows.request_id)) == 6
    # Sessions: ann's rows cut at the 35-minute gap, across the two files; bob's kept apart.
    ann = [by[("ann", t, i)][1] for t, i in (("08:00", "a"), ("08:10", "c"), ("08:35", "a"), ("09:10", "b"))]
    assert ann[0] == ann[1] == ann[2] != ann[3]
    assert by[("bob", "08:00", "a")][1] == by[("bob", "08:20", "c")][1] not in ann
    # Titles: the catalog's own where it has one, else the template (empty fields and brackets left out).
    catalog_out = pd.read_parquet(DayPaths(out, DAY).catalog_file).set_index("item_id")
    assert catalog_out.title.to_dict() == {"a": "Red shoe", "b": "Bolt item b (Bags)", "c": "Acme item c"}
    assert catalog_out.category.fillna("<null>").tolist() == ["Shoes>Running", "Bags", "<null>"]
    # The same input gives the same ids on every run.
    again = tmp_path / "again"
    command.run([str(first), str(second)], str(catalog), again, params(),
                write_mapping(tmp_path / "m.yaml", MAPPING))
    rerun = pd.read_parquet(DayPaths(again, DAY).impressions_dir)
    assert sorted(zip(rerun.event_id, rerun.request_id, rerun.session_id)) == \
        sorted(zip(rows.event_id, rows.request_id, rows.session_id))


def test_every_missing_column_of_every_input_is_named_at_once(tmp_path):
    first, second, catalog = bare_log(tmp_path)
    mapping = {k: MAPPING[k] for k in ("columns", "catalog_columns")}
    out = tmp_path / "out"
    result = cli("ingest", "--impressions", str(first), str(second), "--catalog", str(catalog),
                 "--mapping", str(write_mapping(tmp_path / "m.yaml", mapping)), "--out", str(out),
                 "--params", str(REPO / "params.yaml"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    for column in ("event_id", "request_id", "session_id", "surface", "purchased"):
        assert line.count(f"'{column}'") == 2, column  # once for each input file
    assert str(first) in line and str(second) in line and "set:" in line
    assert "Traceback" not in result.stderr and not out.exists()


BAD = {
    "unknown rule": ({"set": {"event_id": {"uuid": True}}}, "set.event_id: unknown rule 'uuid'"),
    "not a contract column": ({"set": {"user": "x"}}, "set.user: 'user' is not a column of the impressions"),
    "text rule on a number": ({"set": {"position": {"hash": ["slot"]}}}, "set.position: hash makes text"),
    "flag constant": ({"set": {"purchased": 2}}, "set.purchased: constant 2 does not fit"),
    "boolean for text": ({"set": {"surface": True}}, "set.surface: constant True does not fit (true/false fits only"),
    "null required": ({"set": {"surface": None}}, "set.surface: null, but surface may not be null"),
    "session gap": ({"set": {"session_id": {"session": {"gap_minutes": -5}}}},
                    "set.session_id: session: gap_minutes must be"),
    "circle": ({"set": {"request_id": {"hash": ["session_id"]}, "session_id": {"hash": ["request_id"]}}},
               "read each other in a circle"),
    "template without fields": ({"catalog_set": {"title": {"template": "an item"}}},
                                "catalog_set.title: template 'an item' names no {column} field"),
    "unknown column read": ({**MAPPING, "set": {**MAPPING["set"], "request_id": {"hash": ["ts", "visitor"]}}},
                            "set.request_id: reads 'visitor'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_mapping_exits_2_naming_its_key(case, tmp_path):
    mapping, expected = BAD[case]
    first, _, catalog = bare_log(tmp_path)
    out = tmp_path / "out"
    result = cli("ingest", "--impressions", str(first), "--catalog", str(catalog),
                 "--mapping", str(write_mapping(tmp_path / "m.yaml", mapping)), "--out", str(out),
                 "--params", str(REPO / "params.yaml"))
    assert result.returncode == 2, result.stdout
    assert expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_yaml_boolean_sets_a_flag_and_a_constant_fills_only_empty_values(tmp_path):
    first, second, catalog = bare_log(tmp_path)
    frame = pd.read_csv(first)
    frame["surface"] = ["search", None, None, None]
    frame.to_csv(first, index=False)
    mapping = {**MAPPING, "set": {**MAPPING["set"], "purchased": False}}
    out = tmp_path / "out"
    command.run([str(first)], str(catalog), out, params(), write_mapping(tmp_path / "m.yaml", mapping))
    day = pd.read_parquet(DayPaths(out, DAY).impressions_dir)
    assert day.surface.tolist() == ["search", "recommend", "recommend", "recommend"]
    assert set(day.purchased) == {0}
