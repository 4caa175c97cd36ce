"""Drift against the earlier days: a doubled click-through rate at position 1 and a half-size day
are flagged with the severity params give them; the report renders them."""
import json
import shutil
from pathlib import Path
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT
from pipeline.data import drift
from pipeline.data.contract import DayPaths, impression_parts

LAST_DAY = "2026-11-04"
ROWS = 20000


@pytest.fixture(scope="module")
def clean_days(tmp_path_factory):
    """Four simulated days; the fourth is the one validated."""
    root = tmp_path_factory.mktemp("drift")
    subprocess.run([sys.executable, "-m", "pipeline", "simulate", "--start", "2026-11-01", "--days", "4",
                    "--impressions-per-day", str(ROWS), "--params", str(ROOT / "params.yaml"),
                    "--out", str(root / "raw")], check=True, capture_output=True)
    return root / "raw"


def variant(clean_days, tmp_path, edit) -> "Path":
    data = tmp_path / "raw"
    shutil.copytree(clean_days, data)
    part = impression_parts(DayPaths(data, LAST_DAY))[0]
    table = pq.read_table(part)
    frame = edit(table.to_pandas())
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), part)
    return data


def double_ctr_at_position_1(frame):
    rng = np.random.default_rng(0)
    top = frame["position"] == 1
    extra = rng.choice(frame.index[top & (frame["clicked"] == 0)], int(frame.loc[top, "clicked"].sum()),
                       replace=False)
    frame.loc[extra, "clicked"] = 1
    return frame


def keep_half_the_requests(frame):
    keep = frame["request_id"].drop_duplicates().sample(frac=0.5, random_state=0)
    return frame[frame["request_id"].isin(keep)]


def validate(data, out, params_file=ROOT / "params.yaml"):
    result = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--data", str(data), "--day", LAST_DAY,
                             "--params", str(params_file), "--out", str(out)], capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    by_name = {c["statistic"]: c for c in summary["drift"]["checks"]}
    return result, summary, by_name


def test_clean_day_has_no_drift(clean_days, tmp_path):
    result, summary, checks = validate(clean_days, tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert summary["drift"]["days"] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert {c["status"] for c in checks.values()} <= {"passed"}
    assert set(checks) >= {"row_count", "ctr", "ctr_position_1", "purchase_rate", "null_rate_price",
                           "new_item_share", "new_query_share", "query_length_mean", "price_p50"}


def test_doubled_ctr_at_position_1_fails_the_day(clean_days, tmp_path):
    data = variant(clean_days, tmp_path, double_ctr_at_position_1)
    result, summary, checks = validate(data, tmp_path / "report")
    assert result.returncode == 1
    assert checks["ctr_position_1"]["status"] == "failed"
    assert checks["ctr_position_1"]["change"] == pytest.approx(1.0, abs=0.1)
    first_line = result.stderr.splitlines()[0]
    assert "FAILED" in first_line and "ctr_position_1" in first_line
    assert checks["ctr_position_2"]["status"] == "passed"


def test_half_the_rows_is_a_warning_and_the_day_goes_on(clean_days, tmp_path):
    data = variant(clean_days, tmp_path, keep_half_the_requests)
    result, summary, checks = validate(data, tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert checks["row_count"]["status"] == "warning"
    assert any("row_count" in w for w in summary["warnings"])
    assert "WARNINGS" in result.stdout and "row_count" in result.stdout


def test_the_severity_comes_from_params(clean_days, tmp_path):
    """The same half-size day fails once params say a 40% drop in rows is a failure."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"]["drift"]["checks"]["row_count"].update(warn=0.2, fail=0.4)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    data = variant(clean_days, tmp_path, keep_half_the_requests)
    result, _, checks = validate(data, tmp_path / "report", params_file)
    assert result.returncode == 1 and checks["row_count"]["status"] == "failed"
    assert "row_count" in result.stderr.splitlines()[0]


def test_first_day_has_nothing_to_compare_with(clean_days, tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(clean_days, data)
    for day in ("2026-11-02", "2026-11-03", "2026-11-04"):
        shutil.rmtree(DayPaths(data, day).impressions_dir)
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--data", str(data),
                             "--day", "2026-11-01", "--params", str(ROOT / "params.yaml"), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    checks = json.loads((out / "summary.json").read_text())["drift"]["checks"]
    relative = [c for c in checks if c["change_kind"] != "value"]
    assert relative and all(c["status"] == "skipped" for c in relative)


def test_window_manifest_tracks_earlier_days_content(clean_days, tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(clean_days, data)
    before = drift.window_manifest(data, LAST_DAY, window=2)
    assert [e["day"] for e in before["previous"]] == ["2026-11-02", "2026-11-03"]
    part = impression_parts(DayPaths(data, "2026-11-03"))[0]
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 1), part)
    after = drift.window_manifest(data, LAST_DAY, window=2)
    assert before["previous"][0] == after["previous"][0]
    assert before["previous"][1] != after["previous"][1]


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed for this test; `make test` installs it"
    return path


def test_report_renders_in_headless_chromium(clean_days, tmp_path):
    data = variant(clean_days, tmp_path, double_ctr_at_position_1)
    out = tmp_path / "report"
    _, summary, checks = validate(data, out)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    page = (out / "report.html").as_uri()
    dom = subprocess.run([chromium(), *flags, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert 'id="verdict">FAILED<' in dom
    assert dom.count("<svg class=\"chart\"") == len(checks)          # one chart per statistic
    assert 'aria-label="ctr_position_1"' in dom
    drift_table = dom[dom.index('<table id="drift">'):]
    drift_table = drift_table[:drift_table.index("</table>")]
    assert drift_table.count("<tr>") == len(checks) + 1              # header + one row per statistic
    assert '<span class="failed">failed</span>' in drift_table
    shot = tmp_path / "report.png"
    subprocess.run([chromium(), *flags, "--window-size=1200,1600", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_event_id_logged_on_an_earlier_day_is_rejected(clean_days, tmp_path):
    earlier = pq.read_table(impression_parts(DayPaths(clean_days, "2026-11-03"))[0]).to_pandas()

    def reuse_ids(frame):
        frame.loc[frame.index[:3], "event_id"] = earlier["event_id"].iloc[:3].to_numpy()
        return frame

    data = variant(clean_days, tmp_path, reuse_ids)
    result, summary, _ = validate(data, tmp_path / "report")
    assert result.returncode == 1
    first_line = result.stderr.splitlines()[0]
    assert "event_id unique across days" in first_line and "already logged on 2026-11-03" in first_line
    quarantine = pq.read_table(tmp_path / "report" / "quarantine.parquet").to_pandas()
    assert sorted(quarantine["event_id"]) == sorted(earlier["event_id"].iloc[:3])
