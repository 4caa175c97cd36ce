"""A reason for every weight, end to end: `pipeline importance` with the default estimator on a simulated
log with injected bots and accidental clicks writes each row's evidence and reason; the reasons agree
with the simulator's truth; the report groups the low weights by reason and looks any event up, in
headless Chromium."""
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import DAY, ROOT, tiny_params
from pipeline.data.contract import DayPaths, read_impressions

ROWS = 4000


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasons")
    params = tiny_params()
    params["simulate"].update(impressions_per_day=ROWS, bot_session_rate=0.08, accidental_click_rate=0.03,
                              missed_click_rate=0.05)
    params["importance"]["estimators"]["noise_mixture"].update(folds=2, epochs=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (["simulate", "--start", DAY, "--params", "params.yaml", "--out", "raw"],
                 ["importance", "--data", "raw", "--params", "params.yaml", "--out", "scores"]):
        result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=root)
        assert result.returncode == 0, result.stderr
    return root


def test_the_default_estimator_is_the_benchmarks_choice():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["importance"]["estimator"] == "noise_mixture"


def test_reasons_name_the_noise_the_simulator_injected(scored):
    scores = pd.read_parquet(scored / "scores" / "scores.parquet")
    assert list(scores.columns) == ["event_id", "score", "weight", "split", "reason", "evidence_p_bot_session",
                                    "evidence_p_accidental_click", "evidence_p_clean", "evidence_p_click_human"]
    assert scores["reason"].notna().all()
    truth = pd.read_parquet(DayPaths(scored / "raw", DAY).truth_file)
    rows = scores.merge(truth, on="event_id")
    low = rows["weight"] < 0.5
    assert set(rows.loc[low, "reason"]) == {"bot session", "accidental click"}
    assert set(rows.loc[~low, "reason"]) <= {"typical weight", "clean human impression"}
    for reason, kind in (("bot session", "bot_session"), ("accidental click", "accidental_click")):
        named = rows["reason"] == reason
        base = (rows["noise_kind"] == kind).mean()
        precision = (rows.loc[named, "noise_kind"] == kind).mean()
        assert named.sum() >= 10 and precision > 5 * base, f"{reason}: {precision:.2f} of {named.sum()} vs {base:.3f}"
    # Only a click can be accidental; P(clean) is the product of the two components.
    impressions = read_impressions(scored / "raw", DAY)
    clicked = rows["event_id"].map(impressions.set_index("event_id")["clicked"])
    assert (clicked[rows["evidence_p_accidental_click"] > 0] == 1).all()
    assert (clicked[rows["reason"] == "accidental click"] == 1).all()
    product = (1 - rows["evidence_p_bot_session"]) * (1 - rows["evidence_p_accidental_click"])
    pd.testing.assert_series_equal(rows["evidence_p_clean"], product, check_names=False)


def test_the_report_groups_low_weights_by_reason(scored):
    scores = pd.read_parquet(scored / "scores" / "scores.parquet")
    report = json.loads((scored / "scores" / "report.json").read_text())
    groups = {g["reason"]: g for g in report["by_reason"]}
    expected = scores.groupby("reason", observed=True).size().to_dict()
    assert {r: g["rows"] for r, g in groups.items()} == expected
    low = scores[scores["weight"] < 0.5]
    assert report["low_weight_rows"] == len(low) == sum(g["low_weight_rows"] for g in groups.values())
    bots = groups["bot session"]
    assert bots["mean_evidence"]["p_bot_session"] == pytest.approx(
        scores.loc[scores["reason"] == "bot session", "evidence_p_bot_session"].mean(), abs=1e-6)
    lightest = low[low["reason"] == "bot session"].nsmallest(3, "weight")["event_id"].tolist()
    assert [e["event_id"] for e in bots["examples"]] == lightest


def chromium_dom(page: str, profile) -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed for this test; `make test` installs it"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
    return subprocess.run([path, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120,
                          check=True).stdout


def test_the_report_shows_what_drove_a_looked_up_weight_in_chromium(scored, tmp_path):
    scores = pd.read_parquet(scored / "scores" / "scores.parquet")
    row = scores[scores["reason"] == "accidental click"].iloc[0]
    page = (scored / "scores" / "report.html").as_uri()
    dom = chromium_dom(f"{page}#event={row['event_id']}", tmp_path / "profile")
    reason_table = dom[dom.index('<table id="by_reason">'):]
    reason_table = reason_table[:reason_table.index("</table>")]
    assert reason_table.count("<tr>") == 1 + scores["reason"].nunique()
    assert "bot session" in reason_table and "accidental click" in reason_table
    shown = dom[dom.index('<table id="lookup-row">'):]
    shown = shown[:shown.index("</table>")]
    assert str(row["event_id"]) in shown and "accidental click" in shown
    share_below = int((scores["evidence_p_accidental_click"] <= row["evidence_p_accidental_click"]).mean() * 100 - 1e-9)
    assert f"(at or above {share_below}% of rows)" in shown
    missing = chromium_dom(f"{page}#event=no-such-event", tmp_path / "profile")
    assert 'id="lookup-missing"' in missing and "no-such-event: not among the" in missing
