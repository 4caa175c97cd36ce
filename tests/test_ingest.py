"""The ingest stage: a user's Parquet or CSV logs land in the contract's layout, day by day, whole."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.data.contract import CATALOG_SCHEMA, IMPRESSION_SCHEMA, DayPaths
from pipeline.data.ingest import command
from pipeline.data.ingest.columns import IMPRESSIONS
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]
DAY1, DAY2 = "2026-11-01", "2026-11-02"
RENAMES = {"EventID": "event_id", "Timestamp": "ts", "uid": "user_id", "Clicked": "clicked", "pos": "position",
           "tenure": "f_user_tenure_days"}
CATALOG_RENAMES = {"sku": "item_id", "name": "title"}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd)


def params(chunk_rows: int | None = None) -> dict:
    loaded = copy.deepcopy(load_params(REPO / "params.yaml"))
    if chunk_rows is not None:
        loaded["ingest"]["chunk_rows"] = chunk_rows
    return loaded


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """Two small simulated days, written by the simulator's own command."""
    root = tmp_path_factory.mktemp("sim")
    result = cli("simulate", "--start", DAY1, "--days", "2", "--impressions-per-day", "2000",
                 "--params", str(REPO / "params.yaml"), "--out", str(root / "raw"))
    assert result.returncode == 0, result.stderr
    return root / "raw"


def sim_table(sim: Path, day: str) -> pa.Table:
    return pq.read_table(DayPaths(sim, day).impressions_dir / "part-00000.parquet")


def sim_frame(sim: Path, *days: str) -> pd.DataFrame:
    return pd.concat([sim_table(sim, day).to_pandas() for day in days], ignore_index=True)


def day_table(out: Path, day: str) -> pa.Table:
    parts = sorted(DayPaths(out, day).impressions_dir.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    # %.17g: every float survives the text round trip exactly.
    frame.to_csv(path, index=False, float_format="%.17g")
    return path


def their_impressions(sim: Path, *days: str) -> pd.DataFrame:
    """The simulated rows as a user's export might look: other names, a feature without f_ (listed under
    features in the mapping), another renamed to its f_ name, and a stray column."""
    frame = sim_frame(sim, *days).rename(columns={v: k for k, v in RENAMES.items()})
    frame = frame.rename(columns={"f_device": "device", "f_user_tenure_days": "tenure"})
    frame["export_batch"] = "b7"
    return frame


def their_catalog(sim: Path, path: Path) -> Path:
    catalog = pq.read_table(DayPaths(sim, DAY1).catalog_file).to_pandas()
    return write_csv(catalog.rename(columns={v: k for k, v in CATALOG_RENAMES.items()}), path)


def write_mapping(path: Path, **extra) -> Path:
    mapping = {"columns": RENAMES, "catalog_columns": CATALOG_RENAMES, "features": ["device"], **extra}
    path.write_text(yaml.safe_dump(mapping))
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_contract_types(table: pa.Table) -> None:
    for field in IMPRESSION_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name


def test_parquet_glob_round_trips_every_day(sim, tmp_path):
    out = tmp_path / "out"
    summary = command.run(str(sim / "impressions" / "dt=*" / "part-*.parquet"),
                          str(DayPaths(sim, DAY1).catalog_file), out, params())
    assert summary["days"] == [DAY1, DAY2] and len(summary["files"]) == 2
    for day in (DAY1, DAY2):
        assert day_table(out, day).equals(sim_table(sim, day))
        assert pq.read_table(DayPaths(out, day).catalog_file).equals(pq.read_table(DayPaths(sim, DAY1).catalog_file))
        assert pq.read_schema(DayPaths(out, day).catalog_file).equals(CATALOG_SCHEMA)
    assert not list(out.rglob(".*")), "staging left behind"


def test_csv_with_mapping_round_trips_and_splits_days(sim, tmp_path):
    # One gzipped CSV holding both days: its rows must land in two day folders.
    source = write_csv(their_impressions(sim, DAY1, DAY2), tmp_path / "export.csv.gz")
    catalog = their_catalog(sim, tmp_path / "items.csv")
    lines: list[str] = []
    out = tmp_path / "out"
    summary = command.run([str(source)], str(catalog), out, params(), write_mapping(tmp_path / "m.yaml"),
                          log=lines.append)
    assert summary["days"] == [DAY1, DAY2]
    assert summary["rows_quarantined"] == 0
    assert summary["features"] == {"f_device": "string", "f_user_tenure_days": "int64"}
    assert any("dropping column(s) export_batch" in line for line in lines)
    for day in (DAY1, DAY2):
        got, want = day_table(out, day), sim_table(sim, day)
        assert_contract_types(got)
        assert got.equals(want), day
        assert summary["rows_written"][day] == want.num_rows
        assert pq.read_table(DayPaths(out, day).catalog_file).equals(pq.read_table(DayPaths(sim, DAY1).catalog_file))


def test_ts_format_and_timezone(sim, tmp_path):
    frame = their_impressions(sim, DAY1)
    berlin = pd.to_datetime(frame["Timestamp"]).dt.tz_convert("Europe/Berlin")
    frame["Timestamp"] = berlin.dt.strftime("%d/%m/%Y %H:%M:%S.%f")
    # A wall-clock time that happens twice in Berlin (the end of summer time): it cannot be placed.
    frame.loc[5, "Timestamp"] = "25/10/2026 02:30:00.000000"
    source = write_csv(frame, tmp_path / "local.csv")
    mapping = write_mapping(tmp_path / "m.yaml", ts_format="%d/%m/%Y %H:%M:%S.%f", ts_timezone="Europe/Berlin")
    out = tmp_path / "out"
    summary = command.run([str(source)], str(their_catalog(sim, tmp_path / "c.csv")), out, params(), mapping)
    assert summary["days"] == [DAY1]
    want = sim_table(sim, DAY1)
    keep = np.ones(want.num_rows, dtype=bool)
    keep[5] = False
    assert day_table(out, DAY1).equals(want.filter(pa.array(keep)))
    assert summary["quarantine_reasons"] == {
        "ts: local time skipped or repeated by a DST change in Europe/Berlin": 1}


def test_ts_epoch_milliseconds(sim, tmp_path):
    frame = their_impressions(sim, DAY1)
    ts = pd.to_datetime(frame["Timestamp"])
    frame["Timestamp"] = ts.astype("int64") // 10 ** 3 if ts.dt.unit == "us" else ts.astype("int64") // 10 ** 6
    source = tmp_path / "epoch.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source)
    out = tmp_path / "out"
    command.run([str(source)], str(their_catalog(sim, tmp_path / "c.csv")), out, params(),
                write_mapping(tmp_path / "m.yaml", ts_unit="ms"))
    got = day_table(out, DAY1).column("ts").to_pandas()
    want = sim_table(sim, DAY1).column("ts").to_pandas().dt.floor("ms")
    pd.testing.assert_series_equal(got, want, check_names=False)


def test_bad_rows_are_quarantined_with_reasons_and_counts(sim, tmp_path):
    frame = their_impressions(sim, DAY1).astype({"Timestamp": object, "Clicked": object, "pos": object})
    frame.loc[3, "Timestamp"] = "yesterday at noon"
    frame.loc[10, "Clicked"] = "yes"
    frame.loc[11, "pos"] = "x"
    frame.loc[12, ["Clicked", "pos"]] = ["2", "1.5"]
    source = write_csv(frame, tmp_path / "bad.csv")
    out = tmp_path / "out"
    result = cli("ingest", "--impressions", str(source), "--catalog", str(their_catalog(sim, tmp_path / "c.csv")),
                 "--mapping", str(write_mapping(tmp_path / "m.yaml")), "--out", str(out),
                 "--params", str(REPO / "params.yaml"))
    assert result.returncode == 0, result.stderr
    assert f"{len(frame)} impression rows read, {len(frame) - 4} written over 1 day(s), 4 quarantined;" in result.stdout
    for line in ("ts: not an ISO 8601 time: 1", "clicked: not 0 or 1: 2", "position: not an integer: 2"):
        assert line in result.stdout

    quarantine = pq.read_table(out / "_quarantine" / "ingest" / "bad.csv.parquet").to_pandas()
    assert list(quarantine["source_row"]) == [4, 11, 12, 13]  # 1 = the first row after the header
    assert set(quarantine["source_file"]) == {str(source)}
    assert list(quarantine["reason"]) == ["ts: not an ISO 8601 time", "clicked: not 0 or 1",
                                          "position: not an integer", "position: not an integer; clicked: not 0 or 1"]
    assert list(quarantine.columns) == list(frame.columns) + ["reason", "source_file", "source_row"]
    assert quarantine.loc[1, "Clicked"] == "yes" and quarantine.loc[2, "pos"] == "x"
    assert all(pa.types.is_string(t) for t in pq.read_schema(out / "_quarantine/ingest/bad.csv.parquet").types[:-1])
    assert day_table(out, DAY1).num_rows == len(frame) - 4


def test_missing_required_column_exits_2_and_writes_nothing(sim, tmp_path):
    source = write_csv(their_impressions(sim, DAY1).drop(columns=["uid"]), tmp_path / "no_user.csv")
    out = tmp_path / "out"
    result = cli("ingest", "--impressions", str(source), "--catalog", str(their_catalog(sim, tmp_path / "c.csv")),
                 "--mapping", str(write_mapping(tmp_path / "m.yaml")), "--out", str(out),
                 "--params", str(REPO / "params.yaml"))
    assert result.returncode == 2
    assert "user_id" in result.stderr and str(source) in result.stderr and "uid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_truncated_parquet_and_non_utf8_csv_exit_2_leaving_output_alone(sim, tmp_path):
    out = tmp_path / "out"
    catalog = str(DayPaths(sim, DAY1).catalog_file)
    good = str(DayPaths(sim, DAY1).impressions_dir / "part-00000.parquet")
    command.run([good], catalog, out, params())
    before = files_under(out)

    truncated = tmp_path / "truncated.parquet"
    data = Path(good).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    latin1 = tmp_path / "latin1.csv"
    frame = sim_frame(sim, DAY1)
    frame.loc[len(frame) - 1, "query"] = "café crème"
    frame.to_csv(latin1, index=False, encoding="latin-1")
    for bad, words in ((truncated, "Parquet"), (latin1, "UTF-8")):
        # The good file comes first: a failure on a later file must still leave nothing behind.
        result = cli("ingest", "--impressions", good, str(bad), "--catalog", catalog, "--out", str(out),
                     "--params", str(REPO / "params.yaml"))
        assert result.returncode == 2, result.stdout
        assert str(bad) in result.stderr and words in result.stderr
        assert "Traceback" not in result.stderr
        assert files_under(out) == before
        assert not list(out.glob(".*"))


def test_rerun_gives_byte_identical_files(sim, tmp_path):
    frame = their_impressions(sim, DAY1, DAY2).astype({"Clicked": object})
    frame.loc[7, "Clicked"] = "yes"
    source = write_csv(frame, tmp_path / "export.csv")
    catalog = their_catalog(sim, tmp_path / "c.csv")
    mapping = write_mapping(tmp_path / "m.yaml")
    first, second = tmp_path / "a", tmp_path / "b"
    command.run([str(source)], str(catalog), first, params(chunk_rows=700), mapping)
    snapshot = files_under(first)
    command.run([str(source)], str(catalog), first, params(chunk_rows=700), mapping)
    command.run([str(source)], str(catalog), second, params(chunk_rows=700), mapping)
    assert files_under(first) == snapshot == files_under(second)
    assert "_quarantine/ingest/export.csv.parquet" in snapshot
    assert sum(name.startswith("impressions/dt=") for name in snapshot) > 2  # several parts per day


def test_reingesting_a_day_replaces_it_whole(sim, tmp_path):
    frame = their_impressions(sim, DAY1).astype({"pos": object})
    frame.loc[0, "pos"] = "x"
    source = write_csv(frame, tmp_path / "export.csv")
    catalog = their_catalog(sim, tmp_path / "c.csv")
    mapping = write_mapping(tmp_path / "m.yaml")
    out = tmp_path / "out"
    summary = command.run([str(source)], str(catalog), out, params(chunk_rows=500), mapping)
    assert summary["parts"][DAY1] >= 4
    quarantine = out / "_quarantine" / "ingest" / "export.csv.parquet"
    assert quarantine.is_file()

    # The corrected export: one part now, and no stale part or quarantine list from the first run.
    frame.loc[0, "pos"] = 1
    write_csv(frame, source)
    lines: list[str] = []
    command.run([str(source)], str(catalog), out, params(), mapping, log=lines.append)
    assert sorted(p.name for p in DayPaths(out, DAY1).impressions_dir.iterdir()) == ["part-00000.parquet"]
    assert day_table(out, DAY1).equals(sim_table(sim, DAY1))
    assert not quarantine.exists()
    assert any("replaced the previous folder" in line for line in lines)


def test_a_crash_midway_leaves_the_previous_day_in_place(sim, tmp_path, monkeypatch):
    source = write_csv(their_impressions(sim, DAY1), tmp_path / "export.csv")
    catalog = their_catalog(sim, tmp_path / "c.csv")
    mapping = write_mapping(tmp_path / "m.yaml")
    out = tmp_path / "out"
    command.run([str(source)], str(catalog), out, params(chunk_rows=500), mapping)
    before = files_under(out)
    calls = {"n": 0}
    real = command.convert_chunk

    def fail_on_third(chunk, plan, spec, *args):
        calls["n"] += spec.table == IMPRESSIONS
        if calls["n"] == 3:  # two chunks of impressions are already staged
            raise MemoryError("simulated crash")
        return real(chunk, plan, spec, *args)

    monkeypatch.setattr(command, "convert_chunk", fail_on_third)
    with pytest.raises(MemoryError):
        command.run([str(source)], str(catalog), out, params(chunk_rows=300), mapping)
    assert calls["n"] == 3
    assert files_under(out) == before
    assert not list(out.rglob(".*"))


def test_ingested_day_passes_validate(sim, tmp_path):
    source = write_csv(their_impressions(sim, DAY1, DAY2), tmp_path / "export.csv")
    out = tmp_path / "out"
    result = cli("ingest", "--impressions", str(source), "--catalog", str(their_catalog(sim, tmp_path / "c.csv")),
                 "--mapping", str(write_mapping(tmp_path / "m.yaml")), "--out", str(out),
                 "--params", str(REPO / "params.yaml"))
    assert result.returncode == 0, result.stderr
    report = cli("validate", "--data", str(out), "--day", DAY2, "--out", str(tmp_path / "report"),
                 "--params", str(REPO / "params.yaml"))
    assert report.returncode == 0, report.stdout + report.stderr
