"""publish: push a finished run's data, models and reports to the DVC remote, with its lineage record.

`python -m pipeline publish --workspace WS --day D` runs after the day's promote stage, whether
the gate blessed the candidate or not (a rejected run's reports matter too). It
  1. checks that the workspace's last run is that day's and is complete (dvc.lock only keeps the
     latest run, so the record has to be taken now);
  2. points the DVC remote of params.yaml (`remote.name`, `remote.url`) at its URL, in the
     workspace's .dvc/config (the run commit carries it, so a clone of a tag can `dvc pull`);
  3. `dvc push` every output of dvc.lock, and DVC's run cache with `remote.run_cache`;
  4. pushes the day's raw folders with `remote.raw_data` (from a scratch DVC repo in .dvc/tmp, so the
     workspace gets no .dvc files), checking they still hash to what dvc.lock recorded;
  5. pushes the workspace's git branch and sieve/* tags (every run a commit: pipeline/release/runs.py)
     to `remote.git_url`, so `git clone` + `dvc pull` of a day's tag gets the run back;
  6. writes the lineage record (pipeline/release/lineage.py) into the remote, last: a day is listed there
     only once all of its objects are.
Exit codes: 0 published, 1 the run is not complete or a push failed (nothing recorded), 2 bad
arguments or not a DVC workspace.

`python -m pipeline publish --workspace WS --week DAY` publishes the weekly benchmark instead, after
`python -m pipeline select --until DAY` (the benchmark DAG's publish task): it checks that
weekly/dvc.lock is that week's (it keeps only the latest week), `dvc push`es weekly/dvc.yaml's outputs
(the report, benchmark.json and the verdict; the run cache with `remote.run_cache`) and pushes the git
branch and sieve/* tags (sieve/week/DAY among them) as in step 5, so `git clone` + `dvc pull` of the
week's tag gets its report and the selection it left in force. Its raw days were published with their
daily runs, and it writes no lineage record. Same exit codes.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.atomic import read_json
from pipeline.days import parse_day
from pipeline.importance.selection import (
    WEEKLY_LOCK,
    WEEKLY_PIPELINE,
    WEEKLY_STAGE,
    benchmark_dir,
)
from pipeline.params import load_params
from pipeline.release import champions, lineage
from pipeline.runplan import dvc_env

RAW = "data/raw"


class PublishError(Exception):
    """The run cannot be published: incomplete, of another day, or a push failed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository the run used")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", help="YYYY-MM-DD: the run to publish (the workspace's last run)")
    which.add_argument("--week", metavar="DAY",
                       help="YYYY-MM-DD: publish the weekly benchmark of the week up to DAY instead "
                            "(the workspace's last `select --until DAY`)")


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env(),
                          capture_output=True, text=True)


def checked(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise PublishError(f"{what} failed (exit {result.returncode}): {tail}")
    return result


def git(workspace: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version(workspace: Path, lock: dict) -> dict:
    """The git commit (when the workspace has one), whether tracked files changed since, a hash
    of pipeline/ and the md5 of every pipeline/ file or folder a stage depends on."""
    commit = git(workspace, "rev-parse", "--verify", "-q", "HEAD")
    dirty = bool(git(workspace, "status", "--porcelain", "--untracked-files=no")) if commit else None
    deps = {dep["path"]: dep.get("md5") for body in lock["stages"].values() for dep in body.get("deps", [])
            if dep["path"].startswith("pipeline/")}
    return {"git_commit": commit, "git_dirty": dirty,
            "pipeline_sha256": lineage.code_hash(workspace / "pipeline"), "deps": dict(sorted(deps.items()))}


def lock_outs(lock: dict) -> dict:
    """Every output dvc.lock records (outs, metrics and plots alike), by path."""
    outs = {}
    for stage, body in lock["stages"].items():
        for out in body.get("outs", []):
            outs[out["path"]] = {key: out[key] for key in ("md5", "size", "nfiles", "hash") if key in out}
            outs[out["path"]]["stage"] = stage
    return dict(sorted(outs.items()))


def raw_deps(lock: dict, day: str) -> dict:
    """The day's raw folders and the hashes validate read them with."""
    deps = {dep["path"]: {key: dep[key] for key in ("md5", "size", "nfiles", "hash") if key in dep}
            for dep in lock["stages"]["validate"].get("deps", [])}
    wanted = [f"{RAW}/impressions/dt={day}", f"{RAW}/catalog/dt={day}"]
    return {path: deps[path] for path in wanted if path in deps}


def check_run(workspace: Path, day: str) -> dict:
    """The workspace's dvc.lock when its last run is `day`'s and went through promote; else why not."""
    context_file, lock_file = workspace / "run" / "context.yaml", workspace / "dvc.lock"
    if not context_file.is_file() or not lock_file.is_file():
        raise PublishError(f"{workspace} has no finished run (run/context.yaml or dvc.lock is missing)")
    context = yaml.safe_load(context_file.read_text())
    if context.get("day") != day:
        raise PublishError(f"the workspace's last run is {context.get('day')}, not {day}: dvc.lock keeps only "
                           f"the latest run, so publish right after the day's run (or rerun {day})")
    lock = yaml.safe_load(lock_file.read_text())
    stages = lock.get("stages", {})
    from pipeline.runplan import dvc_stage_names
    names = dvc_stage_names(context.get("shard_count") or 1, context.get("window") or [day])
    missing = [name for name in names if name not in stages]
    if missing:
        raise PublishError(f"dvc.lock lacks stage(s) {', '.join(missing)}: the run of {day} did not finish")
    if not any(out["path"].startswith(f"work/validate/dt={day}/") for out in stages["validate"].get("outs", [])):
        raise PublishError(f"dvc.lock's validate stage is not {day}'s: rerun {day} before publishing it")
    promotion = workspace / "work" / "promote" / "promotion.json"
    if not promotion.is_file() or read_json(promotion).get("day") != day:
        raise PublishError(f"{promotion} is not {day}'s: the promote stage of {day} did not run")
    return lock


def build_record(workspace: str | Path, day: str, params: dict | None = None,
                 lock: dict | None = None) -> dict:
    """The lineage record of the workspace's last run (which must be `day`'s)."""
    workspace = Path(workspace).resolve()
    lock = lock if lock is not None else check_run(workspace, day)
    params_bytes = (workspace / "params.yaml").read_bytes()
    params = params if params is not None else load_params(workspace / "params.yaml")
    run_dir = workspace / "run"
    window = read_json(run_dir / "window.json")
    window_days = sorted(entry["day"] for entry in window.get("previous", []))
    promotion = read_json(workspace / "work" / "promote" / "promotion.json")
    decision = read_json(workspace / "work" / "gate" / "decision.json")
    outs = lock_outs(lock)
    for path in (lineage.ENCODER_OUT, lineage.RANKER_OUT):
        if path not in outs:
            raise PublishError(f"dvc.lock has no output {path}")
    if promotion.get("promoted"):
        model_id = promotion["model_id"]
    else:  # the id it would have had: the registry's rule, on the same files
        model_id = champions.model_id_for(day, workspace / lineage.ENCODER_OUT, workspace / lineage.RANKER_OUT)
    stage_params = {stage: body.get("params", {}) for stage, body in lock["stages"].items()}
    return {
        "schema": lineage.SCHEMA,
        "day": day,
        "published_at": champions.now(),
        "data": {"day": day, "window_days": window_days, "days": sorted({*window_days, day}),
                 "window": window, "raw": raw_deps(lock, day)},
        "params": {"sha256": lineage.sha256_bytes(params_bytes),
                   "stages_sha256": lineage.sha256_bytes(lineage.canonical(stage_params)),
                   "values": params},
        "code": code_version(workspace, lock),
        "estimator": read_json(run_dir / "estimator.json"),
        "weight_transform": read_json(run_dir / "weight_transform.json"),
        "parent": read_json(run_dir / "baseline.json").get("champion"),
        "candidate": {"model_id": model_id, "encoder": outs[lineage.ENCODER_OUT], "ranker": outs[lineage.RANKER_OUT]},
        "gate": {key: decision.get(key) for key in ("decision", "blessed", "reason", "baseline")},
        "promotion": promotion,
        "promoted": bool(promotion.get("promoted")),
        "dvc_lock_sha256": lineage.sha256_bytes((workspace / "dvc.lock").read_bytes()),
        "outs": outs,
    }


def configure_remote(workspace: Path, name: str, url: str, default: bool = False) -> None:
    """Point the workspace's remote `name` at `url` in .dvc/config (and make it the default): a run
    commit carries it, so `git clone` + `dvc pull` of a published tag finds the data. Credentials
    belong in .dvc/config.local (git-ignored), which is left alone."""
    current = dvc(["config", "--project", f"remote.{name}.url"], workspace)
    if current.returncode == 0 and current.stdout.strip() != url:
        checked(dvc(["remote", "modify", "--project", name, "url", url], workspace), f"dvc remote modify {name}")
    elif current.returncode != 0:
        checked(dvc(["remote", "add", "--project", name, url], workspace), f"dvc remote add {name}")
    if default and dvc(["config", "--project", "core.remote"], workspace).stdout.strip() != name:
        checked(dvc(["remote", "default", "--project", name], workspace), f"dvc remote default {name}")


def push_raw(workspace: Path, name: str, raw: dict) -> None:
    """Push the day's raw folders from a scratch DVC repo (the workspace does not track data/raw),
    after checking they still hash to what the run read."""
    tmp_root = workspace / ".dvc" / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="publish-raw-", dir=tmp_root))
    try:
        checked(dvc(["init", "--no-scm", "-q"], scratch), "dvc init (scratch)")
        # The workspace's remote settings (credentials included) apply to the scratch repo too.
        for config in ("config", "config.local"):
            if (workspace / ".dvc" / config).is_file():
                shutil.copy(workspace / ".dvc" / config, scratch / ".dvc" / config)
        # ... but it stays a repo of its own: not part of the workspace's git repository.
        checked(dvc(["config", "core.no_scm", "true"], scratch), "dvc config (scratch)")
        for path, recorded in raw.items():
            (scratch / path).parent.mkdir(parents=True, exist_ok=True)
            checked(dvc(["add", "-q", "-o", path, str(workspace / path)], scratch), f"dvc add {path} (scratch)")
            added = yaml.safe_load((scratch / f"{path}.dvc").read_text())["outs"][0]
            if added["md5"] != recorded.get("md5"):
                raise PublishError(f"{path} changed since the run read it (dvc.lock: {recorded.get('md5')}, "
                                   f"now: {added['md5']}): rerun the day before publishing it")
        checked(dvc(["push", "-q", "-r", name], scratch), "dvc push of the raw data")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def push_git(workspace: Path, url: str) -> bool:
    """Push the workspace's branch and its sieve/* tags (pipeline/release/runs.py) to the git
    repository at `url`, a bare one made there when a local path has none. Tags are forced and
    pruned: a rerun moves its day's tag, a day that ran through loses its rejected tag. False when
    the workspace has no commit to push."""
    if git(workspace, "rev-parse", "--verify", "-q", "HEAD") is None:
        return False
    if not lineage.is_url(url) and not (Path(url) / "HEAD").is_file():
        Path(url).mkdir(parents=True, exist_ok=True)
        checked(subprocess.run(["git", "init", "-q", "--bare", url], capture_output=True, text=True),
                f"git init --bare {url}")
    branch = git(workspace, "symbolic-ref", "--short", "-q", "HEAD")
    if branch:
        result = subprocess.run(["git", "push", "-q", url, f"HEAD:refs/heads/{branch}"], cwd=workspace,
                                capture_output=True, text=True)
        if result.returncode:
            said = " ".join(result.stderr.split())[:300]
            raise PublishError(f"git push of {branch} to {url} failed: {said} (does another workspace "
                               f"publish to the same remote.git_url?)")
    checked(subprocess.run(["git", "push", "-q", "--force", "--prune", url, "refs/tags/sieve/*:refs/tags/sieve/*"],
                           cwd=workspace, capture_output=True, text=True), f"git push of the sieve tags to {url}")
    return True


def run(workspace: str | Path, day: str) -> dict:
    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    name, url = lineage.remote_settings(params, workspace)
    section = params.get("remote") or {}
    lock = check_run(workspace, day)
    record = build_record(workspace, day, params, lock)
    if not lineage.is_url(url):
        Path(url).mkdir(parents=True, exist_ok=True)
    configure_remote(workspace, name, url)
    push = ["--wait-for-lock", "push", "-q", "-r", name] + (["--run-cache"] if section.get("run_cache", True) else [])
    checked(dvc(push, workspace), "dvc push")
    raw = record["data"]["raw"]
    record["data"]["raw_pushed"] = bool(section.get("raw_data", True)) and bool(raw)
    if record["data"]["raw_pushed"]:
        push_raw(workspace, name, raw)
    if section.get("git_url"):
        git_url = lineage.resolve_url(str(section["git_url"]), workspace)
        record["git"] = {"url": git_url, "pushed": push_git(workspace, git_url)}
    lineage.RecordStore(url).put(record)
    return record


def check_week(workspace: Path, until: str) -> dict:
    """weekly/dvc.lock when the workspace's last weekly benchmark is the week up to `until`; else why not."""
    lock_file = workspace / WEEKLY_LOCK
    if not lock_file.is_file():
        raise PublishError(f"{workspace} has no weekly benchmark ({WEEKLY_LOCK} is missing): "
                           f"run python -m pipeline select --until {until} first")
    lock = yaml.safe_load(lock_file.read_text()) or {}
    outs = [out["path"] for out in ((lock.get("stages") or {}).get(WEEKLY_STAGE) or {}).get("outs", [])]
    if benchmark_dir(until).as_posix() not in outs:
        raise PublishError(f"{WEEKLY_LOCK} is not the week up to {until} (its outputs: {', '.join(outs) or 'none'}): "
                           f"it keeps only the latest week, so publish right after its select (or rerun it)")
    return lock


def run_week(workspace: str | Path, until: str) -> dict:
    """Push the weekly benchmark's outputs, and the git branch and tags: {week, remote, outs, git}."""
    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    name, url = lineage.remote_settings(params, workspace)
    section = params.get("remote") or {}
    lock = check_week(workspace, until)
    if not lineage.is_url(url):
        Path(url).mkdir(parents=True, exist_ok=True)
    configure_remote(workspace, name, url)
    push = ["--wait-for-lock", "push", "-q", "-r", name] + (["--run-cache"] if section.get("run_cache", True) else [])
    checked(dvc([*push, WEEKLY_PIPELINE.as_posix()], workspace), "dvc push of the weekly benchmark")
    published = {"week": until, "remote": url, "outs": lock_outs(lock)}
    if section.get("git_url"):
        git_url = lineage.resolve_url(str(section["git_url"]), workspace)
        published["git"] = {"url": git_url, "pushed": push_git(workspace, git_url)}
    return published


def main_week(workspace: Path, week: str) -> int:
    try:
        until = parse_day(week)
        if not (workspace / ".dvc").is_dir() or not (workspace / "params.yaml").is_file():
            raise ValueError(f"{workspace.resolve()} is not a DVC workspace with a params.yaml")
        published = run_week(workspace, until)
    except ValueError as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return lineage.EXIT_USAGE
    except PublishError as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return lineage.EXIT_NOT_FOUND
    print(f"publish: the weekly benchmark up to {until} -> {published['remote']}"
          + (f", git {published['git']['url']}" if published.get("git") else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace)
    if getattr(args, "week", None):
        return main_week(workspace, args.week)
    try:
        day = parse_day(args.day)
        if not (workspace / ".dvc").is_dir() or not (workspace / "params.yaml").is_file():
            raise ValueError(f"{workspace.resolve()} is not a DVC workspace with a params.yaml")
        record = run(workspace, day)
    except ValueError as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return lineage.EXIT_USAGE
    except PublishError as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return lineage.EXIT_NOT_FOUND
    outcome = "promoted" if record["promoted"] else "not promoted"
    print(f"publish: {day} ({record['candidate']['model_id']}, {record['gate']['decision']}, {outcome}) "
          f"-> {lineage.remote_settings(load_params(workspace / 'params.yaml'), workspace.resolve())[1]}")
    return 0
