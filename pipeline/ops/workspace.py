"""`python -m pipeline init DIR`: make a workspace for your own data.

A workspace is the DVC repository a retrain runs in (README: "Where the workspace is"): this
project's dvc.yaml, weekly/dvc.yaml (the weekly benchmark's pipeline, with its context
weekly/context.yaml), params.yaml, .dvcignore and pipeline/ code (the stages run
`python -m pipeline ...` there, and dvc.yaml hashes that code), a git repository with DVC
initialised in it and a first commit (every run adds one: pipeline/release/runs.py), and
data/raw/{impressions,catalog}/ for the days (DATA_CONTRACT.md). The tests
(tests/conftest.py) and the Docker deployment (docker/init-workspace.sh) build theirs with this too.

Exit 0: made (or, with --force, refreshed). Exit 2: DIR is not empty and --force was not given, the
source is not this project, the params file cannot be read, or git / dvc failed; one line says
which, and a new DIR is not left half made.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.release import runs

PROJECT = Path(__file__).resolve().parents[2]
COPIED = ("dvc.yaml", ".dvcignore", "weekly/dvc.yaml")
# Copied only where missing: the weekly benchmark's context, which select rewrites every week (the
# project's names no week, so weekly/dvc.yaml has no stage before the first select).
COPIED_IF_MISSING = ("weekly/context.yaml",)
RAW_DIRS = (Path("data/raw/impressions"), Path("data/raw/catalog"))
# Git keeps a workspace's runs (pipeline/release/runs.py): not its data, models or local state.
GITIGNORE = """\
# Raw logs (their hashes are in dvc.lock), the champion registry, failure events, the local remotes.
/data/
/registry/
/events/
/dvc-remote/
/dvc-remote.git/
# Training checkpoints, the workspace lease and its log: local state, not part of a run.
/work/checkpoints/
/run/lease.json
/run/leases.jsonl
/run/.lease.lock
__pycache__/
*.pyc
"""


class WorkspaceError(Exception):
    """The workspace cannot be made; the message says why."""


def check_source(source: Path) -> None:
    missing = [name for name in (*COPIED, *COPIED_IF_MISSING, "params.yaml", "pipeline/__main__.py")
               if not (source / name).is_file()]
    if missing:
        raise WorkspaceError(f"{source} is not the sieve project (no {', '.join(missing)}); "
                             f"pass --source with the project's folder")


def params_text(params: dict | str | Path | None, source: Path) -> str | None:
    """The params.yaml to write: a dict, a file's text (checked to be YAML), or None: keep or copy the project's."""
    if isinstance(params, dict):
        return yaml.safe_dump(params, sort_keys=False)
    if params is None:
        return None
    try:
        text = Path(params).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WorkspaceError(f"{params}: cannot be read as a params file ({' '.join(str(exc).split())})") from exc
    if not isinstance(loaded, dict):
        raise WorkspaceError(f"{params}: a params file is a YAML mapping of sections")
    return text


def copy_code(source: Path, target: Path) -> None:
    """Replace target/pipeline whole, so a module removed from the project does not linger."""
    staged = target / ".pipeline.new"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source / "pipeline", staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.rmtree(target / "pipeline", ignore_errors=True)
    os.replace(staged, target / "pipeline")


def command(args: list[str], cwd: Path, env: dict | None = None) -> None:
    try:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    except OSError as exc:
        raise WorkspaceError(f"{args[0]}: cannot run ({exc})") from exc
    if result.returncode:
        said = " ".join((result.stderr or result.stdout).split())[:300]
        raise WorkspaceError(f"{' '.join(args[-3:])} failed in {cwd} (exit {result.returncode}): {said}")


def fill(target: Path, source: Path, params: str | None) -> None:
    """Put the project's files into `target` and make it a git + DVC repository."""
    for name in COPIED:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, target / name)
    for name in COPIED_IF_MISSING:
        if not (target / name).exists():
            shutil.copy(source / name, target / name)
    copy_code(source, target)
    if params is not None:
        (target / "params.yaml").write_text(params, encoding="utf-8")
    elif not (target / "params.yaml").exists():  # a workspace's own params are its deployment's: kept
        shutil.copy(source / "params.yaml", target / "params.yaml")
    for folder in RAW_DIRS:
        (target / folder).mkdir(parents=True, exist_ok=True)
    if not (target / ".git").exists():
        command(["git", "init", "-q"], target)
    if not (target / ".dvc").exists():
        command([sys.executable, "-m", "dvc", "init", "-q"], target)
        command([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], target)
    if not (target / ".gitignore").exists():
        (target / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    if subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=target, capture_output=True).returncode:
        first_commit(target)


def first_commit(target: Path) -> None:
    """The workspace as made: `dvc exp` and the run commits need a commit to start from."""
    author = str(((yaml.safe_load((target / "params.yaml").read_text()) or {}).get("history") or {}).get("author")
                 or "sieve")
    command(["git", "add", "-A", "--", ".gitignore", ".dvcignore", ".dvc", "dvc.yaml", "weekly", "params.yaml",
             "pipeline"], target)
    command(["git", "commit", "-q", "-m", "sieve: workspace made by python -m pipeline init"], target,
            env=runs.identity(target, author))


def init_workspace(path: str | Path, params: dict | str | Path | None = None, source: str | Path | None = None,
                   force: bool = False) -> Path:
    """Make `path` a workspace. A new or empty folder is built beside it and renamed into place, so
    a failure leaves nothing; with `force`, a non-empty one (an existing workspace) is refreshed in
    place: code, dvc.yaml and .dvcignore replaced, params replaced only when given, data kept."""
    path, source = Path(path), Path(source) if source else PROJECT
    check_source(source)
    text = params_text(params, source)
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"{path} is a file, not a folder")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not force:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise WorkspaceError(f"{path} is not empty ({shown}); pass --force to make it a workspace anyway "
                             f"(code, dvc.yaml, weekly/dvc.yaml and .dvcignore are replaced, data and params kept)")
    if entries:
        fill(path, source, text)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.parent / f".{path.name}.init-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        fill(staged, source, text)
        if path.is_dir():
            path.rmdir()
        os.replace(staged, path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="the workspace folder (new or empty; see --force)")
    parser.add_argument("--params", type=Path, default=None,
                        help="params file to use (default: the project's; an existing workspace keeps its own)")
    parser.add_argument("--force", action="store_true",
                        help="make a non-empty folder a workspace: refresh an existing one's code in place")
    parser.add_argument("--source", type=Path, default=None,
                        help=f"the project whose dvc.yaml, params and pipeline/ to copy (default {PROJECT})")


def main(args: argparse.Namespace) -> int:
    try:
        path = init_workspace(args.dir, args.params, args.source, args.force)
    except WorkspaceError as exc:
        print(f"init: ERROR {exc}", file=sys.stderr)
        return 2
    ws = path.resolve()
    print(f"init: workspace ready: {ws}")
    print(f"  put each day's logs in {ws / 'data/raw'} (python -m pipeline ingest ... --out {ws / 'data/raw'})")
    print(f"  then: cd {ws} && python -m pipeline repro --day YYYY-MM-DD")
    print(f"  or with Airflow: SIEVE_WORKSPACE={ws}")
    return 0
