"""The validate stage on small hand-made days: one good day, and one broken input per contract rule."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages import validate
from pipeline.__main__ import main as cli_main
from pipeline.data.contract import CATALOG_SCHEMA, IMPRESSION_SCHEMA, DayPaths

DAY = "2026-11-01"
N_ITEMS = 50
N_REQUESTS = 30
LIST_LENGTH = 10  # 300 impressions


def _good_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(7)
    items = [f"i{k:04d}" for k in range(N_ITEMS)]
    catalog = pd.DataFrame({
        "item_id": items,
        "title": [f"Running shoe {k} — Laufschuh" for k in range(N_ITEMS)],
        "category": ["Shoes>Running>Men"] * (N_ITEMS - 5) + [None] * 5,
        "brand": [f"brand{k % 7}" for k in range(N_ITEMS)],
        "price": np.round(rng.uniform(5, 120, N_ITEMS), 2),
    })
    start = pd.Timestamp(DAY, tz="UTC")
    rows = []
    for r in range(N_REQUESTS):
        surface = "search" if r % 5 < 3 else "recommend"
        ts = start + pd.Timedelta(seconds=int(rng.integers(0, 86_400)))
        shown = rng.choice(N_ITEMS, size=LIST_LENGTH, replace=False)
        for p in range(LIST_LENGTH):
            clicked = int(rng.random() < 0.2)
            rows.append({
                "event_id": f"e{DAY.replace('-', '')}-{len(rows):06d}",
                "ts": ts,
                "request_id": f"r{r:05d}",
                "user_id": f"u{r % 11:04d}",
                "session_id": f"s{r // 3:04d}",
                "surface": surface,
                "query": f"red shoes {r}" if surface == "search" else None,
                "item_id": items[shown[p]],
                "position": p + 1,
                "clicked": clicked,
                "purchased": int(clicked and rng.random() < 0.3),
                "propensity": None if p == 9 else float(rng.uniform(0.05, 1.0)),
                "price": None if p == 8 else float(catalog.price.iloc[shown[p]]),
            })
    impressions = pd.DataFrame(rows)
    impressions["f_score"] = rng.normal(size=len(impressions))
    impressions["f_brand"] = [f"brand{k % 7}" for k in range(len(impressions))]
    return impressions, catalog


IMPRESSIONS, CATALOG = _good_frames()


def _table(frame: pd.DataFrame, schema: pa.Schema, types: dict[str, pa.DataType]) -> pa.Table:
    fields = []
    for name in frame.columns:
        if name in types:
            fields.append(pa.field(name, types[name]))
        elif name in schema.names:
            fields.append(schema.field(name))
        else:
            fields.append(pa.field(name, pa.Table.from_pandas(frame[[name]], preserve_index=False).schema[0].type))
    return pa.Table.from_pandas(frame, schema=pa.schema(fields), preserve_index=False)


def write_day(root: Path, impressions: pd.DataFrame | None = None, catalog: pd.DataFrame | None = None,
              types: dict[str, pa.DataType] | None = None, catalog_types: dict[str, pa.DataType] | None = None,
              parts: int = 1) -> Path:
    """Write one day in the contract's layout; returns the data folder."""
    impressions = IMPRESSIONS if impressions is None else impressions
    catalog = CATALOG if catalog is None else catalog
    paths = DayPaths(root, DAY)
    paths.impressions_dir.mkdir(parents=True, exist_ok=True)
    paths.catalog_file.parent.mkdir(parents=True, exist_ok=True)
    for k, chunk in enumerate(np.array_split(np.arange(len(impressions)), parts)):
        pq.write_table(_table(impressions.iloc[chunk], IMPRESSION_SCHEMA, types or {}),
                       paths.impressions_dir / f"part-{k:05d}.parquet")
    pq.write_table(_table(catalog, CATALOG_SCHEMA, catalog_types or {}), paths.catalog_file)
    return root


def write_params(path: Path, **validate_section) -> Path:
    section = {"max_bad_fraction": 0.0, **validate_section}
    path.write_text(json.dumps({"seed": 1, "validate": section}), encoding="utf-8")  # JSON is YAML
    return path


def cli(tmp_path: Path, data: Path, *, max_bad_fraction: float = 0.0) -> tuple[int, Path]:
    """Run the CLI in-process; returns the exit code and the report folder."""
    out = tmp_path / "report"
    params = write_params(tmp_path / "params.yaml", max_bad_fraction=max_bad_fraction)
    return cli_main(["validate", "--data", str(data), "--day", DAY, "--out", str(out),
                     "--params", str(params)]), out


def run_broken(tmp_path, capsys, impressions=None, catalog=None, **kwargs):
    data = write_day(tmp_path / "data", impressions, catalog, **kwargs)
    code, out = cli(tmp_path, data)
    err = capsys.readouterr().err.splitlines()
    first = err[0] if err else ""
    if " FAILED " in first:
        # The headline names the file each failing table was read from.
        named = re.findall(r"(?:impressions|catalog) \(([^)]*)\):", first)
        assert named and all(name.startswith(str(data)) for name in named), first
    return code, re.sub(r" \([^)]*\):", ":", first), out


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def changed(frame: pd.DataFrame, rows, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[rows, column] = value
    return frame


# ---------------------------------------------------------------- the good day


def test_good_day_passes_through_the_cli_and_writes_the_report(tmp_path):
    data = write_day(tmp_path / "data", parts=2)
    out = tmp_path / "report"
    params = write_params(tmp_path / "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--data", str(data), "--day", DAY,
                           "--out", str(out), "--params", str(params)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"validate: {DAY} OK 300 rows")
    assert (out / "data_docs" / "index.html").is_file()
    pages = sorted(p.relative_to(out / "data_docs").parts[0] for p in (out / "data_docs").rglob("*.html"))
    assert "expectations" in pages and "validations" in pages
    index = (out / "data_docs" / "index.html").read_text(encoding="utf-8")
    assert "impressions" in index and "catalog" in index and str(tmp_path) not in index

    s = summary(out)
    assert s["success"] is True and s["day"] == DAY and s["failures"] == []
    assert s["tables"]["impressions"]["rows"] == 300 and s["tables"]["catalog"]["rows"] == N_ITEMS
    assert s["tables"]["impressions"]["files"] == ["part-00000.parquet", "part-00001.parquet"]
    statuses = {e["rule"]: e["status"] for e in s["expectations"]}
    # Uniqueness across days needs the drift window, which these params leave out.
    assert statuses.pop("event_id unique across days (the drift window)") == "skipped"
    assert set(statuses.values()) == {"passed"}
    for rule in ("expect_column_to_exist(clicked)", "expect_column_values_to_be_unique(event_id)",
                 "expect_column_values_to_be_between(ts)", "expect_column_type_to_be(ts)",
                 "expect_column_pair_values_to_be_equal(item_id, catalog.item_id)",
                 "expect_compound_columns_to_be_unique(request_id, position)",
                 "expect_column_pair_values_a_to_be_greater_than_b(clicked, purchased)",
                 "expect_column_values_to_be_null(query where surface == 'recommend')",
                 "expect_column_values_to_be_unique(item_id)", "expect_column_type_to_be(f_brand)"):
        assert rule in statuses

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["rows"] == 300 and metrics["catalog_rows"] == N_ITEMS
    assert metrics["ctr"] == pytest.approx(IMPRESSIONS.clicked.mean(), abs=1e-6)
    assert metrics["purchase_rate"] == pytest.approx(IMPRESSIONS.purchased.mean(), abs=1e-6)
    assert metrics["search_share"] == pytest.approx(0.6)
    assert metrics["rules_failed"] == 0 and metrics["rules_skipped"] == 1
    assert metrics["rules_checked"] == len(s["expectations"]) - 1

    quarantine = pq.read_table(out / "quarantine.parquet")
    assert quarantine.num_rows == 0 and "rule" in quarantine.schema.names and "event_id" in quarantine.schema.names


def test_summary_is_deterministic_and_the_report_is_replaced(tmp_path):
    data = write_day(tmp_path / "data")
    first = validate.run(data, DAY, tmp_path / "a", {})
    second = validate.run(data, DAY, tmp_path / "b", {})
    assert first.success and second.success
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()

    # A failing rerun into the same folder replaces the whole report, leaving nothing beside it.
    (tmp_path / "a" / "stale.txt").write_text("old")
    broken = write_day(tmp_path / "broken", changed(IMPRESSIONS, 3, "clicked", 2))
    outcome = validate.run(broken, DAY, tmp_path / "a", {})
    assert not outcome.success
    assert not (tmp_path / "a" / "stale.txt").exists()
    assert summary(tmp_path / "a")["success"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "broken", "data"]


# ---------------------------------------------------------------- one broken input per rule


def test_missing_column_is_reported_as_the_missing_column(tmp_path, capsys):
    code, line, out = run_broken(tmp_path, capsys, IMPRESSIONS.drop(columns=["clicked"]))
    assert code == 1
    assert line.startswith(f"validate: {DAY} FAILED impressions: expect_column_to_exist(clicked)")
    # The rules that read clicked are skipped, not reported as failures or GX exceptions.
    assert line.count("clicked") == 1 and "raised" not in line
    s = summary(out)
    skipped = {e["rule"] for e in s["expectations"] if e["status"] == "skipped"}
    assert "expect_column_pair_values_a_to_be_greater_than_b(clicked, purchased)" in skipped
    assert s["failures"] == ["impressions: expect_column_to_exist(clicked)"]


def test_duplicated_event_id(tmp_path, capsys):
    impressions = IMPRESSIONS.copy()
    impressions.loc[5, "event_id"] = impressions.loc[4, "event_id"]
    code, line, out = run_broken(tmp_path, capsys, impressions)
    assert code == 1
    assert "impressions: expect_column_values_to_be_unique(event_id) 2 unexpected rows" in line
    assert impressions.loc[4, "event_id"] in line
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert list(quarantine["rule"]) == ["expect_column_values_to_be_unique(event_id)"] * 2
    assert list(quarantine["source_file"]) == ["part-00000.parquet"] * 2


def test_purchased_without_click(tmp_path, capsys):
    impressions = changed(changed(IMPRESSIONS, 7, "clicked", 0), 7, "purchased", 1)
    code, line, _ = run_broken(tmp_path, capsys, impressions)
    assert code == 1
    assert "expect_column_pair_values_a_to_be_greater_than_b(clicked, purchased) 1 unexpected row" in line
    assert IMPRESSIONS.loc[7, "event_id"] in line


def test_item_not_in_catalog(tmp_path, capsys):
    code, line, out = run_broken(tmp_path, capsys, changed(IMPRESSIONS, [3, 4], "item_id", "i9999"))
    assert code == 1
    assert "impressions: expect_column_pair_values_to_be_equal(item_id, catalog.item_id) 2 unexpected rows" in line
    assert set(pd.read_parquet(out / "quarantine.parquet")["item_id"]) == {"i9999"}


def test_ts_outside_the_day(tmp_path, capsys):
    start = pd.Timestamp(DAY, tz="UTC")
    impressions = IMPRESSIONS.copy()
    impressions.loc[0, "ts"] = start  # the day's first instant is inside
    impressions.loc[1, "ts"] = start + pd.Timedelta(days=1)  # the next day's first instant is not
    impressions.loc[2, "ts"] = start - pd.Timedelta(microseconds=1)
    code, line, _ = run_broken(tmp_path, capsys, impressions)
    assert code == 1
    assert "expect_column_values_to_be_between(ts) 2 unexpected rows" in line
    assert IMPRESSIONS.loc[1, "event_id"] in line and IMPRESSIONS.loc[2, "event_id"] in line


def test_ts_in_another_time_zone_is_a_type_failure(tmp_path, capsys):
    impressions = IMPRESSIONS.assign(ts=IMPRESSIONS.ts.dt.tz_convert("Europe/Berlin"))
    code, line, _ = run_broken(tmp_path, capsys, impressions, types={"ts": pa.timestamp("us", tz="Europe/Berlin")})
    assert code == 1
    assert "expect_column_type_to_be(ts)" in line and "UTC" in line


def test_query_missing_for_search(tmp_path, capsys):
    search_row = IMPRESSIONS.index[IMPRESSIONS.surface == "search"][0]
    code, line, _ = run_broken(tmp_path, capsys, changed(IMPRESSIONS, search_row, "query", None))
    assert code == 1
    assert "expect_column_values_to_not_be_null(query where surface == 'search') 1 unexpected row" in line


def test_query_blank_for_search(tmp_path, capsys):
    search_row = IMPRESSIONS.index[IMPRESSIONS.surface == "search"][0]
    code, line, _ = run_broken(tmp_path, capsys, changed(IMPRESSIONS, search_row, "query", "  "))
    assert code == 1
    assert "expect_column_values_to_match_regex(query where surface == 'search') 1 unexpected row" in line


def test_query_present_for_recommend(tmp_path, capsys):
    rows = IMPRESSIONS.index[IMPRESSIONS.surface == "recommend"][:3]
    code, line, _ = run_broken(tmp_path, capsys, changed(IMPRESSIONS, rows, "query", "shoes"))
    assert code == 1
    assert "expect_column_values_to_be_null(query where surface == 'recommend') 3 unexpected rows" in line


def test_position_duplicated_within_a_request(tmp_path, capsys):
    code, line, out = run_broken(tmp_path, capsys, changed(IMPRESSIONS, 1, "position", 1))
    assert code == 1
    assert "expect_compound_columns_to_be_unique(request_id, position) 2 unexpected rows" in line
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert list(quarantine["event_id"]) == list(IMPRESSIONS.loc[[0, 1], "event_id"])


def test_position_zero(tmp_path, capsys):
    code, line, _ = run_broken(tmp_path, capsys, changed(IMPRESSIONS, 0, "position", 0))
    assert code == 1
    assert "expect_column_values_to_be_between(position) 1 unexpected row" in line


def test_propensity_zero(tmp_path, capsys):
    code, line, _ = run_broken(tmp_path, capsys, changed(IMPRESSIONS, 12, "propensity", 0.0))
    assert code == 1
    assert "expect_column_values_to_be_between(propensity) 1 unexpected row" in line
    assert IMPRESSIONS.loc[12, "event_id"] in line


def test_negative_price(tmp_path, capsys):
    code, line, out = run_broken(tmp_path, capsys, changed(IMPRESSIONS, 203, "price", -0.5))
    assert code == 1
    assert line == (f"validate: {DAY} FAILED impressions: expect_column_values_to_be_between(price) "
                    f"1 unexpected row (e.g. {IMPRESSIONS.loc[203, 'event_id']})")
    assert pq.read_table(out / "quarantine_catalog.parquet").num_rows == 0


def test_negative_catalog_price(tmp_path, capsys):
    code, line, out = run_broken(tmp_path, capsys, catalog=changed(CATALOG, 2, "price", -1.0))
    assert code == 1
    assert line == (f"validate: {DAY} FAILED catalog: expect_column_values_to_be_between(price) "
                    "1 unexpected row (e.g. i0002)")
    quarantine = pd.read_parquet(out / "quarantine_catalog.parquet")
    assert list(quarantine["item_id"]) == ["i0002"] and list(quarantine["rule"]) == [
        "expect_column_values_to_be_between(price)"]
    assert pq.read_table(out / "quarantine.parquet").num_rows == 0


@pytest.mark.parametrize("user_id", ["jane.doe@example.com", "+49 151 2345 6789", "555-123-4567"])
def test_personal_data_as_user_id(tmp_path, capsys, user_id):
    code, line, _ = run_broken(tmp_path, capsys, changed(IMPRESSIONS, 9, "user_id", user_id))
    assert code == 1
    assert "expect_column_values_to_not_match_regex_list(user_id) 1 unexpected row" in line
    assert user_id not in line  # the message names the row, never the personal data itself


def test_unknown_surface(tmp_path, capsys):
    row = IMPRESSIONS.index[IMPRESSIONS.surface == "recommend"][0]
    code, line, _ = run_broken(tmp_path, capsys, changed(IMPRESSIONS, row, "surface", "homepage"))
    assert code == 1
    assert "expect_column_values_to_be_in_set(surface) 1 unexpected row" in line


def test_clicked_as_string_is_a_type_failure(tmp_path, capsys):
    impressions = IMPRESSIONS.assign(clicked=IMPRESSIONS.clicked.astype(str))
    code, line, out = run_broken(tmp_path, capsys, impressions, types={"clicked": pa.string()})
    assert code == 1
    assert line.startswith(f"validate: {DAY} FAILED impressions: expect_column_type_to_be(clicked) is string")
    assert "raised" not in line
    skipped = {e["rule"] for e in summary(out)["expectations"] if e["status"] == "skipped"}
    assert "expect_column_values_to_be_in_set(clicked)" in skipped


def test_files_of_a_day_that_disagree_on_a_type_are_named(tmp_path, capsys):
    data = write_day(tmp_path / "data", parts=2)
    part = DayPaths(data, DAY).impressions_dir / "part-00001.parquet"
    table = pq.read_table(part)
    pq.write_table(table.set_column(table.schema.get_field_index("position"), "position",
                                    table["position"].cast(pa.string())), part)
    code, _ = cli(tmp_path, data)
    line = capsys.readouterr().err.splitlines()[0]
    assert code == 1
    assert "expect_column_type_to_be(position) is string, the contract says int (part-00001.parquet)" in line


def test_extra_column_must_start_with_f(tmp_path, capsys):
    code, line, _ = run_broken(tmp_path, capsys, IMPRESSIONS.assign(score=1.0))
    assert code == 1
    assert ("expect_table_columns_to_match_set(extra columns must start with f_) "
            "unexpected column(s): score") in line


def test_duplicate_catalog_item_id(tmp_path, capsys):
    catalog = pd.concat([CATALOG, CATALOG.iloc[[0]].assign(title="another title")], ignore_index=True)
    code, line, _ = run_broken(tmp_path, capsys, catalog=catalog)
    assert code == 1
    assert line.startswith(f"validate: {DAY} FAILED catalog: "
                           "expect_column_values_to_be_unique(item_id) 2 unexpected rows")
    assert "i0000" in line


def test_blank_catalog_title(tmp_path, capsys):
    code, line, _ = run_broken(tmp_path, capsys, catalog=changed(CATALOG, 4, "title", ""))
    assert code == 1
    assert "catalog: expect_column_values_to_match_regex(title) 1 unexpected row (e.g. i0004)" in line


# ---------------------------------------------------------------- unreadable files: exit 2


def test_catalog_missing(tmp_path, capsys):
    data = write_day(tmp_path / "data")
    catalog_file = DayPaths(data, DAY).catalog_file
    catalog_file.unlink()
    code, out = cli(tmp_path, data)
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"validate: {DAY} ERROR ") and str(catalog_file) in err[0]
    assert summary(out) == {"day": DAY, "success": False, "error": err[0].split(" ERROR ", 1)[1]}


def test_impressions_folder_missing(tmp_path, capsys):
    data = write_day(tmp_path / "data")
    code, _ = cli(tmp_path, data.parent / "nowhere")
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "impressions" in err[0]


def test_truncated_parquet_through_the_cli(tmp_path):
    data = write_day(tmp_path / "data", parts=2)
    part = DayPaths(data, DAY).impressions_dir / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:200])
    params = write_params(tmp_path / "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--data", str(data), "--day", DAY,
                           "--out", str(tmp_path / "report"), "--params", str(params)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(part) in lines[0], proc.stderr


# ---------------------------------------------------------------- tolerance


def test_max_bad_fraction_lets_a_small_row_level_failure_through(tmp_path, capsys):
    data = write_day(tmp_path / "data", changed(IMPRESSIONS, 5, "clicked", 2))
    code, out = cli(tmp_path, data, max_bad_fraction=0.01)
    assert code == 0
    s = summary(out)
    assert s["success"] is True and s["failures"] == []
    assert s["warnings"] and "expect_column_values_to_be_in_set(clicked)" in s["warnings"][0]
    assert s["tables"]["impressions"]["bad_rows"] == 1
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert list(quarantine["event_id"]) == [IMPRESSIONS.loc[5, "event_id"]]
    assert json.loads((out / "metrics.json").read_text())["rules_failed"] == 1
    capsys.readouterr()

    # Above the threshold it fails again.
    data = write_day(tmp_path / "data", changed(IMPRESSIONS, list(range(5)), "clicked", 2))
    code, _ = cli(tmp_path, data, max_bad_fraction=0.01)
    assert code == 1


def test_max_bad_fraction_never_excuses_a_column_level_failure(tmp_path, capsys):
    impressions = changed(IMPRESSIONS, 5, "clicked", 2).drop(columns=["session_id"])
    data = write_day(tmp_path / "data", impressions)
    code, _ = cli(tmp_path, data, max_bad_fraction=0.5)
    line = capsys.readouterr().err.splitlines()[0]
    assert code == 1
    assert "expect_column_to_exist(session_id)" in line and "expect_column_values_to_be_in_set(clicked)" in line


def test_bad_params_exit_2(tmp_path, capsys):
    data = write_day(tmp_path / "data")
    params = write_params(tmp_path / "bad.yaml", max_bad_fraction=2)
    code = cli_main(["validate", "--data", str(data), "--day", DAY, "--out", str(tmp_path / "r"),
                     "--params", str(params)])
    assert code == 2 and "max_bad_fraction" in capsys.readouterr().err
