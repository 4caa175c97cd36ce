"""The simulator writes contract-shaped, deterministic, plausibly noisy logs."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.data.contract import (CATALOG_SCHEMA, EXTRA_FEATURE_PREFIX, IMPRESSION_SCHEMA, TRUTH_SCHEMA, DayPaths,
                               read_catalog, read_impressions)
from pipeline.params import load_params
from pipeline.data.simulate.command import run
from pipeline.data.simulate.world import plackett_luce

REPO = Path(__file__).resolve().parents[1]
DAY1, DAY2 = "2026-11-01", "2026-11-02"
SMALL = 3000


def _params(rows: int) -> dict:
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["simulate"]["impressions_per_day"] = rows
    return params


def _day_files(root: Path, day: str) -> list[Path]:
    paths = DayPaths(root, day)
    return [paths.impressions_dir / "part-00000.parquet", paths.catalog_file, paths.truth_file]


def _truth(root: Path, day: str) -> pd.DataFrame:
    return pq.read_table(DayPaths(root, day).truth_file).to_pandas()


@pytest.fixture(scope="module")
def two_days(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_days")
    summary = run(DAY1, 2, root, _params(SMALL))
    assert summary["days"] == [DAY1, DAY2]
    return root


@pytest.fixture(scope="module")
def big_day(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A larger day, so rates can be checked against the params with loose bounds."""
    root = tmp_path_factory.mktemp("big_day")
    params = _params(40_000)
    run(DAY1, 1, root, params)
    return read_impressions(root, DAY1), _truth(root, DAY1), params["simulate"]


def test_layout_and_summary(tmp_path):
    summary = run(DAY1, 1, tmp_path, _params(SMALL))
    for path in _day_files(tmp_path, DAY1):
        assert path.is_file(), path
    rows = summary["rows"][DAY1]
    assert abs(rows - SMALL) < 0.05 * SMALL
    assert len(read_impressions(tmp_path, DAY1)) == rows
    # nothing left over from the atomic writes
    assert not [p for p in tmp_path.rglob(".*")]


def test_schemas_match_contract(two_days):
    imp = pq.read_schema(_day_files(two_days, DAY1)[0])
    contract = list(IMPRESSION_SCHEMA.names)
    assert imp.names[:len(contract)] == contract
    extras = imp.names[len(contract):]
    assert set(extras) == {"f_device", "f_user_tenure_days"}
    assert all(name.startswith(EXTRA_FEATURE_PREFIX) for name in extras)
    for field in IMPRESSION_SCHEMA:
        assert imp.field(field.name).type == field.type, field.name
    assert str(imp.field("f_device").type) == "string"
    assert str(imp.field("f_user_tenure_days").type) == "int64"
    assert pq.read_schema(DayPaths(two_days, DAY1).catalog_file).equals(CATALOG_SCHEMA)
    assert pq.read_schema(DayPaths(two_days, DAY1).truth_file).equals(TRUTH_SCHEMA)


def test_byte_identical_whatever_else_was_simulated(two_days, tmp_path):
    params = _params(SMALL)
    run(DAY1, 1, tmp_path / "a", params)
    run(DAY2, 1, tmp_path / "b", params)
    for day, other in ((DAY1, tmp_path / "a"), (DAY2, tmp_path / "b")):
        for mine, theirs in zip(_day_files(two_days, day), _day_files(other, day)):
            assert mine.read_bytes() == theirs.read_bytes(), mine


def test_cli_in_a_fresh_process_gives_the_same_bytes(two_days, tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "simulate", "--start", DAY2, "--days", "1", "--out", str(out),
         "--params", str(REPO / "params.yaml"), "--impressions-per-day", str(SMALL)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and DAY2 in proc.stdout
    for mine, theirs in zip(_day_files(two_days, DAY2), _day_files(out, DAY2)):
        assert mine.read_bytes() == theirs.read_bytes(), mine


def test_days_differ_and_catalog_is_shared(two_days):
    imp1, imp2 = (_day_files(two_days, d)[0].read_bytes() for d in (DAY1, DAY2))
    assert imp1 != imp2
    assert DayPaths(two_days, DAY1).catalog_file.read_bytes() == DayPaths(two_days, DAY2).catalog_file.read_bytes()
    a, b = read_impressions(two_days, DAY1), read_impressions(two_days, DAY2)
    assert not set(a["request_id"]) & set(b["request_id"])
    assert not set(a["session_id"]) & set(b["session_id"])


def test_rewrite_replaces_the_day_whole(tmp_path):
    params = _params(1000)
    run(DAY1, 1, tmp_path, params)
    stray = DayPaths(tmp_path, DAY1).impressions_dir / "part-00001.parquet"
    stray.write_bytes(b"junk")
    run(DAY1, 1, tmp_path, params)
    assert not stray.exists()
    assert len(list(DayPaths(tmp_path, DAY1).impressions_dir.iterdir())) == 1


def test_catalog(two_days):
    cat = read_catalog(two_days, DAY1)
    assert len(cat) >= 2000
    assert cat["item_id"].is_unique
    assert cat["item_id"].str.fullmatch(r"i\d{6}").all()
    assert cat["category"].nunique() >= 12
    assert cat["category"].str.fullmatch(r"[^>]+>[^>]+>[^>]+").all()
    assert (cat["title"].str.len() > 0).all()
    assert cat["title"].nunique() > 0.9 * len(cat)
    assert (cat["price"] >= 0).all() and cat["price"].notna().all()
    # each title names its brand, and brands differ within a category
    assert all(brand in title for brand, title in zip(cat["brand"], cat["title"]))
    assert (cat.groupby("category")["brand"].nunique() >= 6).all()
    # category price levels differ (a jacket costs more than a sock)
    medians = cat.groupby("category")["price"].median()
    assert medians["Clothing>Outerwear>Jackets"] > 3 * medians["Clothing>Socks>Sports"]


def test_row_rules(two_days):
    sim = _params(SMALL)["simulate"]
    cat_ids = set(read_catalog(two_days, DAY1)["item_id"])
    events = []
    for day in (DAY1, DAY2):
        df = read_impressions(two_days, day)
        events.append(df["event_id"])
        assert df["event_id"].notna().all() and df["session_id"].notna().all()
        assert set(df["surface"]) == {"search", "recommend"}
        search = df["surface"] == "search"
        assert df.loc[search, "query"].notna().all()
        assert (df.loc[search, "query"].str.strip().str.len() > 0).all()
        assert df.loc[~search, "query"].isna().all()
        start = pd.Timestamp(day, tz="UTC")
        assert (df["ts"] >= start).all() and (df["ts"] < start + pd.Timedelta(days=1)).all()
        assert df["ts"].is_monotonic_increasing
        assert df["item_id"].isin(cat_ids).all()
        assert ((df["propensity"] > 0) & (df["propensity"] <= 1)).all()
        assert (df["price"] >= 0).all()
        assert not ((df["purchased"] == 1) & (df["clicked"] == 0)).any()
        assert set(df["clicked"]) <= {0, 1} and set(df["purchased"]) <= {0, 1}
        assert set(df["f_device"]) <= {"mobile", "desktop", "tablet"}
        assert (df["f_user_tenure_days"] >= 0).all()
        assert df["user_id"].str.fullmatch(r"u\d{6}").all()
        g = df.groupby("request_id")
        lo, hi = sim["list_length"]
        sizes = g.size()
        assert sizes.between(lo, hi).all()
        assert (g["position"].min() == 1).all() and (g["position"].max() == sizes).all()
        assert not df.duplicated(["request_id", "position"]).any()
        assert not df.duplicated(["request_id", "item_id"]).any()
        # one ts, user, session, surface and query per request
        assert (g[["ts", "user_id", "session_id", "surface"]].nunique() == 1).all().all()
        per_session = df.groupby("session_id")["request_id"].nunique()
        assert per_session.between(*sim["requests_per_session"]).all()
    all_events = pd.concat(events)
    assert all_events.is_unique


def test_queries_look_like_queries(big_day):
    imp, _, sim = big_day
    queries = imp.drop_duplicates("request_id").query("surface == 'search'")["query"]
    words = queries.str.split().str.len()
    short = (words <= 2).mean()
    assert short >= sim["short_query_rate"]  # short queries plus naturally short product types
    assert queries.nunique() > 200
    assert (queries == queries.str.lower()).all()


def test_truth_rows_and_noise_rates(big_day):
    imp, truth, sim = big_day
    assert len(truth) == len(imp)
    assert (truth["event_id"].to_numpy() == imp["event_id"].to_numpy()).all()
    assert set(truth["noise_kind"]) == {"none", "bot_session", "accidental_click", "missed_click"}
    assert (truth["is_noise"] == (truth["noise_kind"] != "none")).all()
    assert truth["relevance"].between(0, 1).all()

    kind = truth["noise_kind"].to_numpy()
    bot_sessions = imp.loc[kind == "bot_session", "session_id"].nunique()
    assert 0.5 * sim["bot_session_rate"] < bot_sessions / imp["session_id"].nunique() < 2 * sim["bot_session_rate"]
    # a bot session is noise on all of its rows, clicks at its own rate and never buys
    bot_rows = imp["session_id"].isin(imp.loc[kind == "bot_session", "session_id"]).to_numpy()
    assert (kind[bot_rows] == "bot_session").all()
    assert abs(imp.loc[bot_rows, "clicked"].mean() - sim["bot_click_rate"]) < 0.3 * sim["bot_click_rate"]
    assert imp.loc[bot_rows, "purchased"].sum() == 0

    clean = ~bot_rows
    accidental = kind == "accidental_click"
    missed = kind == "missed_click"
    clicked = imp["clicked"].to_numpy() == 1
    assert clicked[accidental].all() and (imp["purchased"].to_numpy()[accidental] == 0).all()
    assert (~clicked[missed]).all() and (imp["purchased"].to_numpy()[missed] == 0).all()
    unclicked_before = clean & (~clicked | accidental) & ~missed
    acc_rate = accidental.sum() / unclicked_before.sum()
    assert 0.5 * sim["accidental_click_rate"] < acc_rate < 2 * sim["accidental_click_rate"]
    real_clicks = clean & ((clicked & ~accidental) | missed)
    miss_rate = missed.sum() / real_clicks.sum()
    assert 0.5 * sim["missed_click_rate"] < miss_rate < 2 * sim["missed_click_rate"]


def test_position_bias_and_relevance_drive_clicks(big_day):
    imp, truth, _ = big_day
    ctr = imp.groupby("position")["clicked"].mean()
    assert ctr[1] > ctr[2] > ctr[5] > ctr[10]
    assert ctr.loc[1:5].mean() > 2 * ctr.loc[6:10].mean()
    clean = ~truth["is_noise"].to_numpy()
    rel = truth["relevance"].to_numpy()[clean]
    clicked = imp["clicked"].to_numpy()[clean] == 1
    assert rel[clicked].mean() > rel[~clicked].mean() + 0.02
    bought = imp["purchased"].to_numpy()[clean] == 1
    assert rel[bought].mean() > rel[clicked & ~bought].mean()
    # the logging ranker favours relevant items
    by_pos = pd.Series(truth["relevance"].to_numpy()).groupby(imp["position"].to_numpy()).mean()
    assert by_pos[1] > by_pos[10]
    assert set(imp["surface"]) == {"search", "recommend"}


def test_propensity_is_the_plackett_luce_probability():
    rng = np.random.default_rng(0)
    util = np.array([[2.0, 1.0, 0.0, 0.5, -1.0]])
    valid = np.array([[True, True, True, False, True]])
    draws = 40_000
    beta = 2.0
    ranks, props = plackett_luce(rng, np.repeat(util, draws, 0), np.repeat(valid, draws, 0), beta, 3)
    assert (ranks != 3).all()  # an invalid candidate is never placed
    w = np.exp(util[0] / beta) * valid[0]
    first = np.bincount(ranks[:, 0], minlength=5) / draws
    np.testing.assert_allclose(first, w / w.sum(), atol=0.01)
    np.testing.assert_allclose(props[:, 0], (w / w.sum())[ranks[:, 0]])
    # second place: probability given the item above
    rest = w.sum() - w[ranks[:, 0]]
    np.testing.assert_allclose(props[:, 1], w[ranks[:, 1]] / rest)
    assert ((props > 0) & (props <= 1)).all()
