"""Where a run's outputs are, what the gate decided and, when an earlier day is committed, how the
day's metrics moved against it (`dvc metrics diff` of the two day tags): the last thing `make demo` prints."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.params import load_params
from pipeline.release import champions, history, lineage
from pipeline.runplan import dvc_env

# What the day-against-day diff shows: the candidate's metrics and the day's data (the whole diff,
# slices and bootstrap included, is `dvc metrics diff` itself).
DIFF_SHOWN = {"work/evaluate/metrics.json": "candidate.", "work/validate/metrics.json": ""}

OUTPUTS = (
    ("data-quality report", "work/validate/dt={day}/report.html"),
    ("data-quality Data Docs (GX)", "work/validate/dt={day}/data_docs/index.html"),
    ("importance scores and weights", "work/importance/dt={day}/scores.parquet"),
    ("importance report", "work/importance/dt={day}/report.html"),
    ("text corpus", "work/corpus/texts.parquet"),
    ("encoder refresh metrics", "work/pretrain/metrics.json"),
    ("training metrics", "work/train/metrics.json"),
    ("evaluation metrics", "work/evaluate/metrics.json"),
    ("gate decision", "work/gate/decision.json"),
    ("promotion", "work/promote/promotion.json"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository the run used")


def last_day(workspace: Path) -> str | None:
    context = workspace / "run" / "context.yaml"
    return yaml.safe_load(context.read_text())["day"] if context.is_file() else None


def ranking_lines(metrics: dict) -> list[str]:
    """The primary ranking metric of the candidate, the champion and the trivial baselines per slice,
    and the candidate's bootstrap intervals against the champion and the best baseline."""
    ranking, primary = metrics.get("ranking"), metrics.get("primary_metric")
    if not isinstance(ranking, dict) or not primary:
        return []
    lines = [f"  ranking ({primary}; spread of the candidate's score within requests: "
             f"{(ranking.get('score_spread') or {}).get('std')}):"]
    for slice_name, scored in (ranking.get("slices") or {}).items():
        values = [f"{name} {entry.get(primary)}" for name, entry in scored.items()
                  if isinstance(entry, dict) and entry.get(primary) is not None]
        lines.append(f"    {slice_name:18s} " + ", ".join(values))
    boot = metrics.get("bootstrap") or {}
    level = boot.get("level")
    for label, key in (("vs champion", "candidate_minus_champion"), ("vs best baseline", "candidate_minus_best_baseline")):
        found = ((boot.get(key) or {}).get("overall") or {}).get(primary)
        if found:
            against = f" {found['baseline']}" if "baseline" in found else ""
            lines.append(f"    {label}{against}: {found['diff']:+.4f} ({level:.0%} interval "
                         f"{found['lower']:+.4f} .. {found['upper']:+.4f})")
    return lines


def diff_lines(workspace: Path, day: str | None) -> list[str]:
    """`dvc metrics diff` between the previous day's tag and this day's (pipeline/release/history.py)."""
    days = history.day_tags(workspace)
    earlier = [d for d in days if day and d < day]
    if day not in days or not earlier:
        return []
    old, new = history.day_tag(earlier[-1]), history.day_tag(day)
    command = ["dvc", "metrics", "diff", old, new]
    result = subprocess.run([sys.executable, "-m", *command, "--json"], cwd=workspace, env=dvc_env(),
                            capture_output=True, text=True)
    if result.returncode:
        return [f"  {' '.join(command)} failed: {' '.join(result.stderr.split())[:300]}"]
    diff = json.loads(result.stdout or "{}")
    lines = [f"  against {earlier[-1]} (changed values; all of them: cd {workspace} && {' '.join(command)}):"]
    for path, prefix in DIFF_SHOWN.items():
        for key, change in sorted((diff.get(path) or {}).items()):
            if key.startswith(prefix) and (prefix or "." not in key) and not isinstance(change.get("new"), str):
                moved = f" ({change['diff']:+.4g})" if isinstance(change.get("diff"), (int, float)) else ""
                lines.append(f"    {path.split('/')[1]:9s} {key:26s} {change.get('old')} -> {change.get('new')}{moved}")
    return lines


def run(workspace: str | Path) -> list[str]:
    workspace = Path(workspace).resolve()
    day = last_day(workspace)
    lines = [f"  day: {day or 'no run yet'}"]
    for label, relative in OUTPUTS:
        path = workspace / relative.format(day=day)
        lines.append(f"  {label:30s} {path}" + ("" if path.exists() else "  (missing)"))
    metrics_file = workspace / "work/evaluate/metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        lines.append(f"  candidate metrics: {metrics['candidate']}")
        if metrics.get("champion"):
            lines.append(f"  champion metrics:  {metrics['champion']} ({metrics['champion_id']})")
        lines.extend(ranking_lines(metrics))
    decision_file = workspace / "work/gate/decision.json"
    if decision_file.is_file():
        decision = json.loads(decision_file.read_text())
        lines.append(f"  gate: {decision['decision']}: {decision['reason']}")
    params = load_params(workspace / "params.yaml")
    champion = champions.current(workspace / params["registry"]["dir"])
    lines.append(f"  champion: {champion['model_id'] + ' (trained on ' + champion['day'] + ')' if champion else 'none'}")
    if day and params.get("remote"):
        _, url = lineage.remote_settings(params, workspace)
        try:
            published = lineage.RecordStore(url).day(day) is not None
        except Exception:  # an unreachable remote: say where, without a verdict
            published = None
        lines.append(f"  published to: {url}" + {True: "", False: "  (not published)", None: ""}[published])
        lines.append(f"  lineage: python -m pipeline lineage --workspace {workspace}")
    if day in history.day_tags(workspace):
        lines.append(f"  committed: git -C {workspace} show {history.day_tag(day)}")
    lines.extend(diff_lines(workspace, day))
    return lines


def main(args: argparse.Namespace) -> int:
    print("sieve run outputs:")
    print("\n".join(run(args.workspace)))
    return 0
