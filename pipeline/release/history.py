"""Reading a workspace's history of runs from git: the run commits' `Sieve-*` trailers and the tags.

pipeline/release/runs.py makes the commits and tags; this module only reads them (lineage, the run
summary and the tune command read them too), so it imports nothing else of the package.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

TAG_PREFIX = "sieve"


def day_tag(day: str) -> str:
    """The day's latest complete run."""
    return f"{TAG_PREFIX}/day/{day}"


def rejected_tag(day: str) -> str:
    """The day's latest run stopped by the data contract."""
    return f"{TAG_PREFIX}/rejected/{day}"


def week_tag(until: str) -> str:
    """The weekly estimator benchmark of the week ending `until`."""
    return f"{TAG_PREFIX}/week/{until}"


def git_output(workspace: Path, *args: str) -> str:
    """What a read-only git command prints; empty when the workspace is no git repository or git fails."""
    if not (Path(workspace) / ".git").exists():
        return ""
    try:
        result = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)
    except OSError:
        return ""
    return result.stdout if result.returncode == 0 else ""


def run_commits(workspace: str | Path) -> list[dict]:
    """Every day's run commit, newest first: {sha, day, run, outcome, gate, champion, ...} from the trailers."""
    log = git_output(Path(workspace), "log", "--format=%H%x00%(trailers:only,unfold)%x1e")
    runs = []
    for entry in log.split("\x1e"):
        sha, _, trailers = entry.strip().partition("\x00")
        fields = dict(line.split(": ", 1) for line in trailers.splitlines() if ": " in line)
        if "Sieve-Day" in fields:
            runs.append({"sha": sha, **{key.removeprefix("Sieve-").lower(): value for key, value in fields.items()}})
    return runs


def day_tags(workspace: str | Path) -> dict[str, str]:
    """{day: commit} of the days with a complete run committed (a sieve/day/ tag), oldest first."""
    listed = git_output(Path(workspace), "for-each-ref", "--format=%(refname:short) %(objectname)",
                        f"refs/tags/{TAG_PREFIX}/day/")
    tagged = dict(line.split() for line in listed.splitlines() if line.strip())
    return {tag.rsplit("/", 1)[-1]: sha for tag, sha in sorted(tagged.items())}
