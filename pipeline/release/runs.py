"""Every run a git commit: the workspace's git history is its history of runs.

After a day's run (the DAG's `commit` task, or `python -m pipeline repro` by hand once it ran
through promote) the workspace's git repository gets one commit holding what the run was:
dvc.lock (every output's hash), dvc.yaml, params.yaml, the pipeline/ code, the run's context in
run/ (the day, its drift window, the champion before it, the estimator and weight transform) and
the weekly benchmark's selection. Its message names the day, the run id, the gate decision and the
champion, also as `Sieve-*` trailers (`git log --format='%(trailers)'`).

Tags, one per day, moved when the day is rerun:
  sieve/day/YYYY-MM-DD       the day's latest complete run
  sieve/rejected/YYYY-MM-DD  the day's latest run stopped by the data contract: committed with its
                             data-quality report (rejections/dt=DAY/), champion untouched; removed
                             once the day runs through
  sieve/week/YYYY-MM-DD      the weekly estimator benchmark of the week ending that day
                             (python -m pipeline select: commit_selection, at the end)
A run whose stage crashed commits nothing and moves no tag.

So DVC's own commands compare and fetch days: `dvc metrics diff sieve/day/A sieve/day/B`,
`dvc plots diff sieve/day/A sieve/day/B`, `dvc get --rev sieve/day/A . work/train/model`, and
`git checkout sieve/day/A && dvc checkout` puts a day back in the workspace.

Runs of one workspace already take turns on its lease (pipeline/ops/lease.py); the commit is made
under it (the DAG's task checks that its run holds the lease before it calls this command).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.atomic import read_json
from pipeline.days import parse_day
from pipeline.params import load_params
from pipeline.release import champions
from pipeline.release.history import day_tag, rejected_tag, week_tag
from pipeline.release.lineage import remote_settings
from pipeline.release.publish import PublishError, check_run, configure_remote

REJECTIONS = Path("rejections")
# What a commit holds besides pipeline/ and the .gitignore files DVC writes beside its outputs.
RUN_FILES = ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore",
             "run/context.yaml", "run/train_window.json", "run/window.json", "run/baseline.json", "run/estimator.json",
             "run/weight_transform.json", "selection", "weekly", "pipeline", str(REJECTIONS))
# A rejected day's data-quality report, small enough for git (data_docs and quarantines stay on disk).
REJECTION_FILES = ("summary.json", "metrics.json", "report.json", "report.html")
EXIT_NOT_COMMITTED = 1
BY_HAND = "by-hand"  # the run id of a run started with python -m pipeline repro


class CommitError(Exception):
    """The run cannot be committed: not a git workspace, an unfinished run, git failed."""


def git(workspace: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True,
                                env={**os.environ, **(env or {})})
    except OSError as exc:
        raise CommitError(f"git cannot run: {exc}") from exc
    if check and result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[:400]
        raise CommitError(f"git {' '.join(args[:3])} failed in {workspace} (exit {result.returncode}): {said}")
    return result


def is_source_tree(workspace: Path) -> bool:
    """The sieve project itself (make demo once ran there): its git history is the code's, not runs'."""
    return (workspace / "pyproject.toml").is_file() and (workspace / "tests").is_dir()


def identity(workspace: Path, author: str) -> dict:
    """Git's author and committer from `history.author` when git has none configured for the workspace."""
    if git(workspace, "config", "user.email", check=False).stdout.strip():
        return {}
    name, _, email = author.partition("<")
    name, email = name.strip() or "sieve", email.rstrip(">").strip() or "sieve@localhost"
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}


def history_settings(params: dict) -> dict:
    section = params.get("history") or {}
    return {"commit": bool(section.get("commit", True)), "author": str(section.get("author") or "sieve")}


def stage_run_files(workspace: Path) -> None:
    git(workspace, "add", "-u")  # deletions and changes of files an earlier run committed
    present = [name for name in RUN_FILES if (workspace / name).exists()]
    present += [str(p.relative_to(workspace)) for p in (workspace / "work").rglob(".gitignore")]
    # A workspace's own .gitignore may leave some of them out (run/, say): its call.
    ignored = set(git(workspace, "check-ignore", "--", *present, check=False).stdout.splitlines()) if present else set()
    wanted = [name for name in present if name not in ignored]
    if wanted:
        git(workspace, "add", "-A", "--", *wanted)


def commit(workspace: Path, message: str, author: str) -> str:
    stage_run_files(workspace)
    # --allow-empty: a rerun served from DVC's cache changes no file, but it is a run all the same.
    git(workspace, "commit", "-q", "--allow-empty", "-m", message, env=identity(workspace, author))
    return git(workspace, "rev-parse", "HEAD").stdout.strip()


def message(day: str, run_id: str, outcome: str, fields: dict) -> str:
    head = (f"{fields['Sieve-Gate']}, champion {fields['Sieve-Champion']}" if outcome == "complete"
            else "rejected by the data contract, champion unchanged")
    trailers = {"Sieve-Day": day, "Sieve-Run": run_id, "Sieve-Outcome": outcome, **fields}
    return f"sieve {day}: {head}\n\n" + "\n".join(f"{key}: {value}" for key, value in trailers.items()) + "\n"


def prepared(workspace: Path, params: dict) -> bool:
    """Whether to commit at all; raises CommitError when the workspace cannot take a commit."""
    if not history_settings(params)["commit"]:
        return False
    if is_source_tree(workspace):
        print(f"commit: {workspace} is the sieve source tree, not a workspace: no run commit "
              f"(python -m pipeline init DIR makes a workspace)", file=sys.stderr)
        return False
    if not (workspace / ".git").exists():
        raise CommitError(f"{workspace} is not a git repository: make it a workspace with python -m pipeline init")
    name, url = remote_settings(params, workspace)
    try:  # in the committed config, so `git clone` + `dvc pull` of a tag finds the data
        configure_remote(workspace, name, url, default=True)
    except PublishError as exc:
        raise CommitError(str(exc)) from exc
    return True


def commit_complete(workspace: str | Path, day: str, run_id: str) -> str | None:
    """Commit the workspace's finished run of `day` and tag it; the commit's sha (None: committing is off)."""
    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    if not prepared(workspace, params):
        return None
    try:
        check_run(workspace, day)
    except PublishError as exc:
        raise CommitError(str(exc)) from exc
    decision = read_json(workspace / "work" / "gate" / "decision.json")
    promotion = read_json(workspace / "work" / "promote" / "promotion.json")
    serving = champions.current(workspace / params["registry"]["dir"])
    fields = {"Sieve-Gate": decision.get("decision"),
              "Sieve-Candidate": promotion.get("model_id") or "none",
              "Sieve-Promoted": "yes" if promotion.get("promoted") else "no",
              "Sieve-Champion": (serving or {}).get("model_id") or "none"}
    shutil.rmtree(workspace / REJECTIONS / f"dt={day}", ignore_errors=True)
    sha = commit(workspace, message(day, run_id, "complete", fields), history_settings(params)["author"])
    git(workspace, "tag", "-f", day_tag(day), sha)
    git(workspace, "tag", "-d", rejected_tag(day), check=False)
    return sha


def commit_rejected(workspace: str | Path, day: str, run_id: str, report_dir: Path, reason: str) -> str | None:
    """Commit a day the data contract rejected, with its data-quality report, and tag it rejected."""
    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    if not prepared(workspace, params):
        return None
    kept = workspace / REJECTIONS / f"dt={day}"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for name in REJECTION_FILES:
        if (report_dir / name).is_file():
            shutil.copy2(report_dir / name, kept / name)
    serving = champions.current(workspace / params["registry"]["dir"])
    fields = {"Sieve-Champion": (serving or {}).get("model_id") or "none",
              "Sieve-Reason": " ".join(reason.split())[:300]}
    sha = commit(workspace, message(day, run_id, "rejected", fields), history_settings(params)["author"])
    git(workspace, "tag", "-f", rejected_tag(day), sha)
    return sha


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the workspace whose run to commit")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD: the run's day (the workspace's last run)")
    parser.add_argument("--run-id", default=BY_HAND, help="the run's id for the commit message (the DAG's run id)")


def main(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace).resolve()
    try:
        day = parse_day(args.day)
        sha = commit_complete(workspace, day, args.run_id)
    except (ValueError, CommitError) as exc:
        print(f"commit: {exc}", file=sys.stderr)
        return EXIT_NOT_COMMITTED
    if sha is not None:
        print(f"commit: {day} committed as {sha[:12]}, tagged {day_tag(day)}")
    return 0


# The weekly benchmark (python -m pipeline select): every week a commit too, tagged sieve/week/YYYY-MM-DD,
# the week's last day. Its trailers start with Sieve-Week, not Sieve-Day: history.run_commits lists days only.
def week_message(until: str, run_id: str, fields: dict) -> str:
    head = (f"selected {fields['Sieve-Selection']}" if fields["Sieve-Outcome"] == "selected"
            else f"no estimator selected, the selection stays {fields['Sieve-Selection']}")
    trailers = {"Sieve-Week": until, "Sieve-Run": run_id, **fields}
    return f"sieve week {until}: {head}\n\n" + "\n".join(f"{key}: {value}" for key, value in trailers.items()) + "\n"


def commit_selection(workspace: str | Path, until: str, run_id: str) -> str | None:
    """Commit the workspace's weekly benchmark of the week up to `until` (weekly/dvc.lock and context,
    the selection in force) and tag it; the commit's sha (None: committing is off)."""
    from pipeline.importance import selection
    from pipeline.release.publish import check_week

    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    if not prepared(workspace, params):
        return None
    try:
        check_week(workspace, until)
    except PublishError as exc:
        raise CommitError(str(exc)) from exc
    verdict = read_json(workspace / selection.benchmark_dir(until) / selection.VERDICT_FILE)
    chosen = workspace / selection.SELECTION_FILE
    in_force = read_json(chosen).get("estimator") if chosen.is_file() else None
    fields = {"Sieve-Outcome": "selected" if verdict.get("estimator") else "unchanged",
              "Sieve-Selection": in_force or "none (params decide)",
              "Sieve-Reason": " ".join(str(verdict.get("reason")).split())[:300]}
    sha = commit(workspace, week_message(until, run_id, fields), history_settings(params)["author"])
    git(workspace, "tag", "-f", week_tag(until), sha)
    return sha
