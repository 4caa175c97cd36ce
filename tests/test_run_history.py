"""Every run a git commit, tagged by day: days compared with `dvc metrics diff`, restored with
`git clone` + `dvc pull` of a tag; a rejected day committed with its report; a crash commits nothing.

One module workspace: a copy of the session's completed day, published, then the next day run and
published on top of it (the git history a user's workspace has after two days)."""
import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DAY, NEXT_DAY, repro, run, simulate

from pipeline.data.contract import DayPaths, impression_parts
from pipeline.release import champions, history, runs
from pipeline.runplan import EXIT_DATA_REJECTED

pytestmark = pytest.mark.slow
THIRD_DAY = "2026-11-03"


def git(repo: Path, *args: str, check: bool = True) -> str:
    return run(["git", *args], repo, check=check).stdout.strip()


def dvc(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo).stdout


def publish(workspace: Path, day: str) -> None:
    run([sys.executable, "-m", "pipeline", "publish", "--workspace", str(workspace), "--day", day], workspace)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def two_days(completed_run, tmp_path_factory) -> dict:
    """The workspace after two days, each published; the day-1 files read before day 2 ran."""
    workspace = shutil.copytree(completed_run, tmp_path_factory.mktemp("history") / "ws", symlinks=True)
    # The copy's DVC remote is its own folder: committed again, the day's commit says so (and its tag moves).
    committed = run([sys.executable, "-m", "pipeline", "commit", "--workspace", str(workspace), "--day", DAY], workspace)
    assert committed.stdout.startswith(f"commit: {DAY} committed as ")
    publish(workspace, DAY)
    first = {"metrics": load(workspace / "work/evaluate/metrics.json"),
             "validate": load(workspace / "work/validate/metrics.json"),
             "champion": champions.current(workspace / "registry"),
             "decision": load(workspace / "work/gate/decision.json")}
    repro(workspace, NEXT_DAY)
    publish(workspace, NEXT_DAY)
    return {"workspace": workspace, "first": first}


def test_second_day_compares_against_the_first_days_champion(two_days):
    workspace, first = two_days["workspace"], two_days["first"]["champion"]
    metrics = load(workspace / "work/evaluate/metrics.json")
    assert metrics["day"] == NEXT_DAY and metrics["champion_id"] == first["model_id"]
    assert metrics["champion"] is not None
    decision = load(workspace / "work/gate/decision.json")
    assert decision["baseline"] == first["model_id"] and not decision["without_baseline"]
    assert {"value", "change"} <= {c["kind"] for c in decision["checks"]} <= {"value", "change", "relative_change"}


def test_each_day_is_a_commit_and_a_tag_naming_its_gate_decision_and_champion(two_days):
    workspace = two_days["workspace"]
    commits = history.run_commits(workspace)
    # The session's run of DAY, its commit again in the copy, then NEXT_DAY's run.
    assert [(r["day"], r["outcome"], r["run"]) for r in commits] == [
        (NEXT_DAY, "complete", runs.BY_HAND), (DAY, "complete", runs.BY_HAND), (DAY, "complete", runs.BY_HAND)]
    assert commits[0]["gate"] == load(workspace / "work/gate/decision.json")["decision"]
    assert commits[1]["gate"] == two_days["first"]["decision"]["decision"]
    assert commits[0]["champion"] == champions.current(workspace / "registry")["model_id"]
    assert commits[1]["champion"] == two_days["first"]["champion"]["model_id"]
    for day, entry in ((DAY, commits[1]), (NEXT_DAY, commits[0])):
        assert git(workspace, "rev-parse", f"{history.day_tag(day)}^{{commit}}") == entry["sha"]
        # The commit holds what the run was: dvc.lock of that day, its context, params and code.
        context = yaml.safe_load(git(workspace, "show", f"{entry['sha']}:run/context.yaml"))
        assert context["day"] == day
        assert f"work/validate/dt={day}/report.html" in git(workspace, "show", f"{entry['sha']}:dvc.lock")
    assert git(workspace, "ls-files", "params.yaml", "pipeline/__main__.py", "dvc.yaml").split() == [
        "dvc.yaml", "params.yaml", "pipeline/__main__.py"]
    # Nothing a run writes is left outside git or DVC (data, registry and local state are ignored).
    assert git(workspace, "status", "--porcelain") == ""


def test_dvc_metrics_diff_between_day_tags_lines_up_both_days(two_days):
    workspace = two_days["workspace"]
    diff = json.loads(dvc(workspace, "metrics", "diff", "--json", history.day_tag(DAY), history.day_tag(NEXT_DAY)))
    evaluated, validated = diff["work/evaluate/metrics.json"], diff["work/validate/metrics.json"]
    second = load(workspace / "work/evaluate/metrics.json")
    for name, value in two_days["first"]["metrics"]["candidate"].items():
        if value is not None and value != second["candidate"][name]:
            assert evaluated[f"candidate.{name}"]["old"] == pytest.approx(value)
            assert evaluated[f"candidate.{name}"]["new"] == pytest.approx(second["candidate"][name])
    assert validated["rows"] == {"old": two_days["first"]["validate"]["rows"],
                                 "new": load(workspace / "work/validate/metrics.json")["rows"],
                                 "diff": validated["rows"]["diff"]}


def test_a_clone_of_a_day_tag_pulls_back_that_days_model_byte_for_byte(two_days, tmp_path):
    workspace, first = two_days["workspace"], two_days["first"]["champion"]
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "--branch", history.day_tag(DAY), str(workspace / "dvc-remote.git"), str(clone)], tmp_path)
    dvc(clone, "pull", "-q")
    registry = champions.model_dir(workspace / "registry", first)
    for pulled, kept in (("work/train/model", "ranker"), ("work/pretrain/encoder", "encoder")):
        files = sorted(p.relative_to(clone / pulled) for p in (clone / pulled).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(registry / kept) for p in (registry / kept).rglob("*") if p.is_file())
        for name in files:
            assert (clone / pulled / name).read_bytes() == (registry / kept / name).read_bytes()


def test_a_crashed_stage_commits_nothing_and_a_rejected_day_is_committed_with_its_report(two_days):
    workspace = two_days["workspace"]
    head, tags = git(workspace, "rev-parse", "HEAD"), git(workspace, "tag", "--list")
    champion = champions.current(workspace / "registry")
    simulate(workspace, THIRD_DAY)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    crashing = {**params, "pretrain": {**params["pretrain"], "base_model": str(workspace / "no-such-model")}}
    (workspace / "params.yaml").write_text(yaml.safe_dump(crashing, sort_keys=False))
    try:
        crashed = repro(workspace, THIRD_DAY, check=False)
    finally:
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert crashed.returncode == 1 and "stage pretrain failed" in crashed.stderr
    assert (git(workspace, "rev-parse", "HEAD"), git(workspace, "tag", "--list")) == (head, tags)

    part = impression_parts(DayPaths(workspace / "data/raw", THIRD_DAY))[0]
    table = pq.read_table(part)
    frame = table.to_pandas()
    frame.loc[:4, "position"] = -1
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), part)
    rejected = repro(workspace, THIRD_DAY, check=False)
    assert rejected.returncode == EXIT_DATA_REJECTED, rejected.stderr
    latest = history.run_commits(workspace)[0]
    assert (latest["day"], latest["outcome"]) == (THIRD_DAY, "rejected") and "position" in latest["reason"]
    assert latest["champion"] == champion["model_id"] == champions.current(workspace / "registry")["model_id"]
    assert git(workspace, "rev-parse", f"{history.rejected_tag(THIRD_DAY)}^{{commit}}") == latest["sha"]
    assert git(workspace, "tag", "--list", f"sieve/day/{THIRD_DAY}") == ""
    kept = yaml.safe_load(git(workspace, "show", f"{latest['sha']}:rejections/dt={THIRD_DAY}/summary.json"))
    assert kept["success"] is False and kept["day"] == THIRD_DAY
    # Lineage reads git where the remote has nothing: the rejected day was committed, never published.
    shown = run([sys.executable, "-m", "pipeline", "lineage", "--workspace", str(workspace), "--day", THIRD_DAY],
                workspace).stdout
    assert f"run of {THIRD_DAY}: not published; committed as {latest['sha'][:12]} (rejected" in shown
    chain = run([sys.executable, "-m", "pipeline", "lineage", "--workspace", str(workspace)], workspace).stdout
    assert f"({history.day_tag(NEXT_DAY)})" in chain and f"({history.day_tag(DAY)})" in chain
    changed = set(git(workspace, "show", "--name-only", "--format=", "HEAD").split())
    assert {f"rejections/dt={THIRD_DAY}/{name}" for name in runs.REJECTION_FILES} | {"run/context.yaml"} <= changed
    assert all(not name.startswith("work/") or name.endswith(".gitignore") for name in changed), changed
