"""The weekly benchmark as the DVC stage of weekly/dvc.yaml: `select` runs it through DVC under the
workspace's lease, an unchanged week is a cache hit, the week is a commit tagged sieve/week/DAY that
`publish --week` pushes, and a benchmark that selects nothing leaves the selection as it was."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DAY, NEXT_DAY, make_workspace, run, simulate, tiny_params

from pipeline.importance import selection
from pipeline.ops import lease
from pipeline.release import history
from pipeline.runplan import context_yaml

WEEK = NEXT_DAY  # the week up to the second simulated day: both days are benchmarked


def select(workspace: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pipeline", "select", "--workspace", str(workspace), "--until", WEEK],
               workspace, check=check)


def git(workspace: Path, *args: str) -> str:
    return run(["git", *args], workspace).stdout.strip()


def dvc(workspace: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], workspace).stdout


def weekly_stage(workspace: Path) -> dict:
    return yaml.safe_load((workspace / selection.WEEKLY_LOCK).read_text())["stages"][selection.WEEKLY_STAGE]


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    """A workspace from before the weekly stage (its selection tracked with `dvc add`), then one select.
    The tests below run in order on it; the last one changes params."""
    params = tiny_params()
    # One estimator, one transform, one seed, one removal point: the benchmark's plumbing, in seconds. No
    # floor under the recovery, so the estimator is selected whatever a tiny log's recovery is.
    params["benchmark"].update(estimators="click_model", days=2, transforms={"params": {}}, removal_fractions=[0.1],
                               train_seeds=1, min_recovery_gap=0.0, min_cost_se=0.0, tie_tolerance=0.0,
                               beat_baselines=False)
    workspace = make_workspace(tmp_path_factory.mktemp("weekly") / "ws", params)
    simulate(workspace, DAY, days=2)
    old = {"estimator": "oof_loss", "transform": selection.transform_of(params), "reason": "an older benchmark"}
    (workspace / "selection").mkdir()
    (workspace / selection.SELECTION_FILE).write_text(json.dumps(old))
    (workspace / "run").mkdir(exist_ok=True)  # the old select wrote it: dvc add reads dvc.yaml, whose vars it holds
    (workspace / "run/context.yaml").write_text(context_yaml(WEEK, 1))
    dvc(workspace, "add", str(selection.SELECTION_FILE))
    git(workspace, "add", "selection", "run/context.yaml")
    git(workspace, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "the old dvc-added selection")
    return {"workspace": workspace, "first": select(workspace)}


def test_select_runs_the_stage_through_dvc_and_commits_the_week(week):
    workspace = week["workspace"]
    assert f"Running stage '{selection.WEEKLY_PIPELINE.as_posix()}:{selection.WEEKLY_STAGE}'" in week["first"].stdout
    stage = weekly_stage(workspace)
    assert [out["path"] for out in stage["outs"]] == [selection.benchmark_dir(WEEK).as_posix()]
    assert "weekly/context.yaml" in [dep["path"] for dep in stage["deps"]]
    assert f"--day {DAY} --day {NEXT_DAY}" in stage["cmd"]
    # The verdict named an estimator: it is the selection now, and git (no longer dvc add) keeps it.
    verdict = json.loads((workspace / selection.benchmark_dir(WEEK) / selection.VERDICT_FILE).read_text())
    assert verdict["estimator"] == "click_model"
    assert json.loads((workspace / selection.SELECTION_FILE).read_text()) == verdict
    assert not (workspace / f"{selection.SELECTION_FILE}.dvc").exists()
    assert git(workspace, "ls-files", "selection") == str(selection.SELECTION_FILE)
    # The outputs are in DVC's cache and the stage is up to date.
    assert "up to date" in dvc(workspace, "status", selection.WEEKLY_PIPELINE.as_posix())
    md5 = stage["outs"][0]["md5"]
    assert (workspace / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file()
    # One commit per week, tagged, holding the lock; a week is not a day's run.
    assert git(workspace, "rev-parse", f"{history.week_tag(WEEK)}^{{commit}}") == git(workspace, "rev-parse", "HEAD")
    trailers = git(workspace, "log", "-1", "--format=%(trailers:only,unfold)")
    assert f"Sieve-Week: {WEEK}" in trailers and "Sieve-Outcome: selected" in trailers
    assert "Sieve-Selection: click_model" in trailers
    assert "benchmark@latest" in git(workspace, "show", f"{history.week_tag(WEEK)}:{selection.WEEKLY_LOCK.as_posix()}")
    assert history.run_commits(workspace) == []
    assert git(workspace, "status", "--porcelain") == ""
    assert lease.read(workspace)["holder"] is None


def test_an_unchanged_week_is_a_dvc_cache_hit(week):
    workspace = week["workspace"]
    report = workspace / selection.benchmark_dir(WEEK) / "benchmark.json"
    before = report.stat().st_mtime_ns
    again = select(workspace)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    assert report.stat().st_mtime_ns == before
    assert git(workspace, "rev-parse", f"{history.week_tag(WEEK)}^{{commit}}") == git(workspace, "rev-parse", "HEAD")


def test_select_refuses_a_workspace_another_run_holds(week):
    workspace = week["workspace"]
    assert lease.acquire(workspace, "scheduled__2026-11-03", NEXT_DAY, stale_after=60, queue=False) is None
    try:
        refused = select(workspace, check=False)
    finally:
        lease.release(workspace, "scheduled__2026-11-03")
    assert refused.returncode == 4 and "busy" in refused.stderr


def test_publish_week_pushes_the_outputs_and_the_tags(week):
    workspace = week["workspace"]
    published = run([sys.executable, "-m", "pipeline", "publish", "--workspace", str(workspace), "--week", WEEK],
                    workspace)
    assert f"weekly benchmark up to {WEEK}" in published.stdout
    md5 = weekly_stage(workspace)["outs"][0]["md5"]
    assert (workspace / "dvc-remote/files/md5" / md5[:2] / md5[2:]).is_file()
    tags = run(["git", "tag", "--list", "sieve/*"], workspace / "dvc-remote.git").stdout.split()
    assert history.week_tag(WEEK) in tags
    other = run([sys.executable, "-m", "pipeline", "publish", "--workspace", str(workspace), "--week", DAY],
                workspace, check=False)
    assert other.returncode == 1 and f"not the week up to {DAY}" in other.stderr


def test_a_benchmark_that_selects_nothing_leaves_the_selection(week):
    workspace = week["workspace"]
    chosen = (workspace / selection.SELECTION_FILE).read_bytes()
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["benchmark"]["max_cost_ratio"] = -1.0  # every estimator over the cost budget: no winner
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = select(workspace)
    assert "Running stage" in rerun.stdout and "stays as it was" in rerun.stdout
    verdict = json.loads((workspace / selection.benchmark_dir(WEEK) / selection.VERDICT_FILE).read_text())
    assert verdict["estimator"] is None and "cost budget" in verdict["reason"]
    assert (workspace / selection.SELECTION_FILE).read_bytes() == chosen
    trailers = git(workspace, "log", "-1", "--format=%(trailers:only,unfold)")
    assert "Sieve-Outcome: unchanged" in trailers and "Sieve-Selection: click_model" in trailers
    assert git(workspace, "status", "--porcelain") == ""


def test_the_verdict_file_is_the_one_the_benchmark_writes():
    from pipeline.importance.benchmark import run as benchmark

    assert selection.VERDICT_FILE == benchmark.SELECTION_FILE
