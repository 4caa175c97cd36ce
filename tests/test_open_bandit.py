"""The Open Bandit Dataset, the README's worked example: real ZOZOTOWN logs from the obp 0.4.1 wheel
brought in by examples/open_bandit/mapping.yaml alone, into a workspace made by `pipeline init`, and
its first day through validate, corpus and pretrain in DVC.

The wheel is fetched once with `pip download` into a cache folder outside the repository
($SIEVE_TEST_CACHE, default ~/.cache/sieve-tests) and checked against its sha256; obp itself is
never installed. Only an unreachable package index skips the test.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, tiny_params
from pipeline.data.contract import IMPRESSION_SCHEMA, DayPaths

pytestmark = pytest.mark.slow

WHEEL = "obp-0.4.1-py3-none-any.whl"
WHEEL_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
SAMPLE = "obp/dataset/obd/random/all/"
MAPPING = ROOT / "examples" / "open_bandit" / "mapping.yaml"
FIRST_DAY = "2019-11-24"
# What pip says when it cannot reach the index (no network, no DNS, a proxy refusing).
UNREACHABLE = re.compile(r"NewConnectionError|Failed to establish|Temporary failure in name resolution|"
                         r"Name or service not known|Network is unreachable|Connection refused|ProxyError|"
                         r"Max retries exceeded|timed out", re.I)


def cache_dir() -> Path:
    return Path(os.environ.get("SIEVE_TEST_CACHE", Path.home() / ".cache" / "sieve-tests"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel() -> Path:
    """The obp wheel from the cache, downloaded (wheel only, no dependencies) when absent."""
    folder = cache_dir() / "obp"
    wheel = folder / WHEEL
    if not (wheel.is_file() and sha256(wheel) == WHEEL_SHA256):
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "obp==0.4.1", "--no-deps",
                                 "--only-binary", ":all:", "--disable-pip-version-check", "--timeout", "30",
                                 "-d", str(folder)], capture_output=True, text=True, timeout=300)
        if result.returncode and UNREACHABLE.search(result.stdout + result.stderr):
            pytest.skip("the package index is unreachable: cannot pip download obp==0.4.1 "
                        f"(put {WHEEL} in {folder} to run this test offline)")
        assert result.returncode == 0, result.stdout + result.stderr
    assert sha256(wheel) == WHEEL_SHA256, f"{wheel} is not the obp 0.4.1 wheel this test was written for"
    return wheel


@pytest.fixture(scope="module")
def obd(tmp_path_factory) -> Path:
    """The random policy's 'all' campaign sample: all.csv and item_context.csv, out of the wheel."""
    out = tmp_path_factory.mktemp("obd")
    with zipfile.ZipFile(fetch_wheel()) as wheel:
        for name in ("all.csv", "item_context.csv"):
            (out / name).write_bytes(wheel.read(SAMPLE + name))
    return out


def pipeline(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_open_bandit_sample_comes_in_by_mapping_alone_and_passes_validation(obd, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    ws = tmp_path / "zozo"
    made = pipeline("init", str(ws), "--params", str(params))
    assert made.returncode == 0, made.stderr

    ingested = pipeline("ingest", "--impressions", str(obd / "all.csv"), "--catalog", str(obd / "item_context.csv"),
                        "--mapping", str(MAPPING), "--out", str(ws / "data/raw"), "--params", str(ws / "params.yaml"))
    assert ingested.returncode == 0, ingested.stderr
    assert "10000 impression rows read, 10000 written over 7 day(s), 0 quarantined" in ingested.stdout

    # Every row landed on its UTC day, with its click, position and propensity as logged.
    source = pd.read_csv(obd / "all.csv", index_col=0)
    source["day"] = source.timestamp.str[:10]
    days = sorted(source.day.unique())
    assert days[0] == FIRST_DAY and len(days) == 7
    frames = []
    for day in days:
        table = pq.read_table(DayPaths(ws / "data/raw", day).impressions_dir)
        assert table.schema.names[:len(IMPRESSION_SCHEMA)] == IMPRESSION_SCHEMA.names
        frames.append(table.to_pandas())
        assert len(frames[-1]) == (source.day == day).sum()
    rows = pd.concat(frames, ignore_index=True)
    assert rows.event_id.is_unique and rows.event_id.str.startswith("obd-random-all:").all()
    by_row = rows.set_index(rows.event_id.str.split(":").str[1].astype(int) - 1).sort_index()
    assert by_row.clicked.tolist() == source.click.tolist()
    assert by_row.position.tolist() == source.position.tolist()
    assert by_row.propensity.tolist() == source.propensity_score.tolist()
    assert by_row.item_id.tolist() == source.item_id.astype(str).tolist()
    assert set(rows.surface) == {"recommend"} and rows["query"].isna().all() and rows.purchased.eq(0).all()
    # The derived ids: one user per combination of the four user features; a request is one user at
    # one instant; a session holds each user's rows until 30 idle minutes.
    users = source[[f"user_feature_{k}" for k in range(4)]].astype(str).agg("|".join, axis=1)
    assert by_row.user_id.nunique() == users.nunique()
    assert by_row.request_id.nunique() == (users + source.timestamp).nunique()
    assert rows.user_id.nunique() < rows.session_id.nunique() < len(rows)
    catalog = pq.read_table(DayPaths(ws / "data/raw", FIRST_DAY).catalog_file).to_pandas()
    assert len(catalog) == 80 and catalog.title.str.fullmatch(r"item \d+").all()
    assert catalog.category.str.count(">").eq(2).all()

    # The first day through every stage of the retrain, in DVC, as the DAG runs them.
    ran = pipeline("repro", "--day", FIRST_DAY, cwd=ws)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    summary = json.loads((ws / f"work/validate/dt={FIRST_DAY}/summary.json").read_text())
    assert summary["success"] is True and summary["failures"] == [], summary["failures"]
    assert (ws / f"work/validate/dt={FIRST_DAY}/report.html").is_file()
    # No queries: the corpus is the 80 placeholder titles and no (query, clicked title) pair, so the
    # encoder is not refreshed and the base encoder embeds the titles.
    texts = pq.read_table(ws / "work/corpus/texts.parquet").to_pandas()
    assert len(texts) == 80 and pq.read_table(ws / "work/corpus/pairs.parquet").num_rows == 0
    pretrain = json.loads((ws / "work/pretrain/metrics.json").read_text())
    assert pretrain["refresh_used"] is False and pretrain["texts"] == 80
    # The default estimator scores every row and says why each weighs what it does.
    scores = pq.read_table(ws / f"work/importance/dt={FIRST_DAY}/scores.parquet").to_pandas()
    assert len(scores) == (source.day == FIRST_DAY).sum() and scores["reason"].notna().all()
    assert scores.columns.str.startswith("evidence_").any()
    # About 5 clicks a day: the held-out slice cannot judge a ranker, and the gate says so by its knob
    # instead of blessing or failing; the (absent) champion is left alone.
    decision = json.loads((ws / "work/gate/decision.json").read_text())
    held_out_clicks = int(rows.loc[rows.event_id.isin(scores.loc[scores.split == "holdout", "event_id"]), "clicked"].sum())
    assert held_out_clicks < tiny_params()["gate"]["min_clicks"]
    assert decision["decision"] == "NOT_ENOUGH_EVIDENCE" and "gate.min_clicks" in decision["reason"]
    promotion = json.loads((ws / "work/promote/promotion.json").read_text())
    assert promotion["promoted"] is False and not (ws / "registry" / "champion.json").exists()
