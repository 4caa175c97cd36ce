"""publish, restore and lineage on real runs: three days through DVC, each published to a local remote,
then days restored from the remote alone into fresh folders."""
from __future__ import annotations

import filecmp
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_workspace, repro, run, simulate, tiny_params
from pipeline.release import champions

pytestmark = pytest.mark.slow

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True)


def publish(workspace: Path, day: str) -> subprocess.CompletedProcess:
    return cli("publish", "--workspace", str(workspace), "--day", day, cwd=workspace)


class Published:
    """The workspace, its remote, and what each day's run left in the workspace when published."""

    def __init__(self, root: Path):
        self.root = root
        self.workspace = root / "ws"
        self.remote = root / "remote"
        self.locks: dict[str, dict] = {}
        self.params_sha: dict[str, str] = {}
        self.commits: dict[str, str] = {}
        self.estimators: dict[str, dict] = {}

    def record(self, day: str) -> dict:
        return json.loads((self.remote / "lineage" / "days" / f"{day}.json").read_text())

    def champion_dir(self, model_id: str) -> Path:
        return self.workspace / "registry" / "models" / model_id


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Published:
    """Day 1 promoted (no parent), day 2 promoted (parent: day 1), day 3 rejected by a gate it cannot
    pass (parent: day 2), each published right after its run to ../remote (relative to the workspace)."""
    state = Published(tmp_path_factory.mktemp("published"))
    params = tiny_params()
    params["remote"] = {"name": "backup", "url": "../remote", "run_cache": True, "raw_data": True}
    workspace = make_workspace(state.workspace, params)
    simulate(workspace, DAYS[0], days=len(DAYS))
    for day in DAYS:
        if day == DAYS[-1]:
            params["gate"]["checks"]["auc_click"]["min_value"] = 0.999  # no tiny model reaches it
            (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        repro(workspace, day)  # the run's commit holds the params it ran with
        state.commits[day] = run(["git", "rev-parse", "HEAD"], workspace).stdout.strip()
        result = publish(workspace, day)
        assert result.returncode == 0, result.stderr
        state.locks[day] = yaml.safe_load((workspace / "dvc.lock").read_text())
        state.params_sha[day] = hashlib.sha256((workspace / "params.yaml").read_bytes()).hexdigest()
        state.estimators[day] = json.loads((workspace / "run" / "estimator.json").read_text())
    return state


def lock_out(lock: dict, path: str) -> dict:
    return next(o for body in lock["stages"].values() for o in body.get("outs", []) if o["path"] == path)


def assert_same_tree(left: Path, right: Path) -> None:
    files_left = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    files_right = sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file())
    assert files_left == files_right and files_left
    for rel in files_left:
        assert filecmp.cmp(left / rel, right / rel, shallow=False), rel


def test_each_day_has_a_record_with_its_lineage(published):
    records = {day: published.record(day) for day in DAYS}
    first, second, third = (records[d] for d in DAYS)
    # Promotion outcomes and the parent champions.
    assert first["promoted"] and second["promoted"] and not third["promoted"]
    assert third["gate"]["decision"] == "NOT_BLESSED" and "auc_click" in third["gate"]["reason"]
    assert first["parent"] is None
    assert second["parent"]["model_id"] == first["candidate"]["model_id"]
    assert third["parent"]["model_id"] == second["candidate"]["model_id"]
    history = champions.history(published.workspace / "registry")
    assert [e["model_id"] for e in history] == [first["candidate"]["model_id"], second["candidate"]["model_id"]]
    for day in DAYS:
        record, lock = records[day], published.locks[day]
        # Data days: the day and the drift window before it.
        assert record["data"]["days"] == DAYS[:DAYS.index(day) + 1]
        assert set(record["data"]["raw"]) == {f"data/raw/impressions/dt={day}", f"data/raw/catalog/dt={day}"}
        # Params, code, estimator as they were at the day's run.
        assert record["params"]["sha256"] == published.params_sha[day]
        assert record["params"]["values"]["gate"]["checks"]["auc_click"]["min_value"] == (0.999 if day == DAYS[-1] else 0.5)
        assert record["code"]["git_commit"] == published.commits[day] and record["code"]["git_dirty"] is False
        assert record["code"]["pipeline_sha256"] and "pipeline/stages/train.py" in record["code"]["deps"]
        assert record["estimator"] == published.estimators[day]
        assert record["weight_transform"]["transform"]
        # The outputs are the day's dvc.lock's, taken at publish time.
        for path in ("work/pretrain/encoder", "work/train/model", f"work/validate/dt={day}/report.html"):
            assert record["outs"][path]["md5"] == lock_out(lock, path)["md5"]
        assert record["candidate"]["ranker"]["md5"] == lock_out(lock, "work/train/model")["md5"]
    assert records[DAYS[0]]["params"]["sha256"] != records[DAYS[-1]]["params"]["sha256"]
    models = published.remote / "lineage" / "models"
    assert {p.stem for p in models.glob("*.json")} == {r["candidate"]["model_id"] for r in records.values()}


def test_publish_configures_the_remote_and_pushes_run_cache_and_raw_data(published):
    # In the committed config (the run commits carry it), as the default: a clone of a tag pulls from it.
    config = (published.workspace / ".dvc" / "config").read_text()
    assert 'remote "backup"' in config and str(published.remote.resolve()) in config and "remote = backup" in config
    assert config == run(["git", "show", "HEAD:.dvc/config"], published.workspace).stdout
    assert any((published.remote / "runs").rglob("*")), "the run cache was not pushed"
    for day in DAYS:
        for entry in published.record(day)["data"]["raw"].values():
            md5 = entry["md5"]
            assert (published.remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    # The workspace gains no .dvc files for its raw data.
    assert not list((published.workspace / "data").rglob("*.dvc"))


def test_publish_refuses_a_day_that_is_not_the_workspace_last_run(published):
    before = (published.remote / "lineage" / "days" / f"{DAYS[0]}.json").read_bytes()
    result = publish(published.workspace, DAYS[0])
    assert result.returncode == 1
    assert f"last run is {DAYS[-1]}" in result.stderr
    assert (published.remote / "lineage" / "days" / f"{DAYS[0]}.json").read_bytes() == before


def restore(remote: Path, day: str, out: Path) -> subprocess.CompletedProcess:
    # From the project root: only the remote is needed, no workspace.
    return cli("restore", "--remote", str(remote), "--day", day, "--out", str(out), cwd=ROOT)


@pytest.mark.parametrize("day, champion_day, source", [
    (DAYS[0], DAYS[0], "candidate"),   # promoted: its own model
    (DAYS[1], DAYS[1], "candidate"),
    (DAYS[2], DAYS[1], "parent"),      # rejected: the parent champion, from day 2's record
])
def test_restore_brings_back_the_day_champion_and_reports(published, tmp_path, day, champion_day, source):
    from pipeline.model.encoder import load_encoder
    from pipeline.model.ranker import load

    out = tmp_path / "fresh" / "restored"
    out.parent.mkdir()
    result = restore(published.remote, day, out)
    assert result.returncode == 0, result.stderr

    model_id = published.record(champion_day)["candidate"]["model_id"]
    pointer = champions.current(out)
    assert pointer["model_id"] == model_id and pointer["source"] == source
    assert_same_tree(out / pointer["path"], published.champion_dir(model_id))
    load(out / pointer["path"] / "ranker")
    assert json.loads((out / pointer["path"] / "encoder" / "config.json").read_text())["model_type"]
    load_encoder(out / pointer["path"] / "encoder")
    for report in ("validate/report.html", "validate/report.json", "validate/data_docs/index.html",
                   "importance/report.html", "importance/report.json", "evaluate/metrics.json",
                   "gate/decision.json", "promote/promotion.json"):
        assert (out / "reports" / report).is_file(), report
    decision = json.loads((out / "reports" / "gate" / "decision.json").read_text())
    assert decision["blessed"] == (day != DAYS[-1])
    report = json.loads((out / "reports" / "validate" / "report.json").read_text())
    assert day in json.dumps(report)
    assert json.loads((out / "lineage.json").read_text())["day"]["day"] == day
    assert sorted(p.name for p in out.parent.iterdir()) == ["restored"]  # no scratch left behind


def test_restore_of_an_unknown_day_fails_and_writes_nothing(published, tmp_path):
    out = tmp_path / "restored"
    result = restore(published.remote, "2026-10-15", out)
    assert result.returncode == 1
    assert "no published record for 2026-10-15" in result.stderr and DAYS[0] in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_restore_with_an_object_missing_from_the_remote_fails_and_writes_nothing(published, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(published.remote, remote)
    # Day 3's champion is day 2's model: delete its ranker weights from the remote.
    tree = published.record(DAYS[1])["candidate"]["ranker"]["md5"]
    listing = json.loads((remote / "files" / "md5" / tree[:2] / tree[2:]).read_text())
    weights = next(e["md5"] for e in listing if e["relpath"].endswith(".safetensors"))
    (remote / "files" / "md5" / weights[:2] / weights[2:]).unlink()
    work = tmp_path / "work"
    work.mkdir()
    out = work / "restored"
    out.mkdir()  # an empty folder given: it stays empty

    result = restore(remote, DAYS[2], out)

    assert result.returncode == 1
    assert weights in result.stderr
    assert [p.name for p in work.iterdir()] == ["restored"] and list(out.iterdir()) == []
    # A day whose objects are all there still restores from the same remote.
    assert restore(remote, DAYS[0], work / "day1").returncode == 0


def test_restore_refuses_a_folder_that_is_not_empty(published, tmp_path):
    out = tmp_path / "restored"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = restore(published.remote, DAYS[0], out)
    assert result.returncode == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def lineage(published, *args: str) -> subprocess.CompletedProcess:
    return cli("lineage", "--workspace", str(published.workspace), *args, cwd=published.workspace)


def test_lineage_shows_the_parent_chain(published):
    ids = [published.record(day)["candidate"]["model_id"] for day in DAYS]
    result = lineage(published, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["champion"] == ids[1]
    assert [item["model_id"] for item in shown["chain"]] == [ids[1], ids[0]]
    assert shown["chain"][0]["parent"] == ids[0] and shown["chain"][1]["parent"] is None
    assert shown["chain"][0]["data_days"] == DAYS[:2]
    assert shown["chain"][0]["params_sha256"] == published.params_sha[DAYS[1]]
    assert shown["chain"][0]["git_commit"] == published.commits[DAYS[1]]
    assert shown["chain"][0]["estimator"] == published.estimators[DAYS[1]]["estimator"]
    assert shown["chain"][0]["gate"] == "BLESSED"
    assert shown["unpublished"] is None

    text = lineage(published)
    assert text.returncode == 0
    assert text.stdout.index(f"model {ids[1]}") < text.stdout.index(f"parent {ids[0]}")
    assert published.commits[DAYS[1]][:12] in text.stdout

    day3 = json.loads(lineage(published, "--day", DAYS[2], "--json").stdout)
    assert day3["run"]["model_id"] == ids[2] and not day3["run"]["promoted"]
    assert day3["run"]["gate"] == "NOT_BLESSED"
    assert day3["served_after"] == {"model_id": ids[1], "day": DAYS[1], "source": "parent"}
    assert [item["model_id"] for item in day3["chain"]] == [ids[1], ids[0]]

    first = json.loads(lineage(published, "--model", ids[0], "--json").stdout)
    assert [item["model_id"] for item in first["chain"]] == [ids[0]]


def test_lineage_of_an_unknown_model_or_day_fails(published):
    assert lineage(published, "--model", "2026-01-01-000000000000").returncode == 1
    missing_day = lineage(published, "--day", "2026-10-15")
    assert missing_day.returncode == 1 and "no published record" in missing_day.stderr
    assert lineage(published, "--day", "not-a-day").returncode == 2
