"""The champion history trained on a window of days against one day, judged by next-day ranking quality.

    python benchmarks/training_window.py [--days 14] [--windows 1,7,7w] [--impressions N] [--work DIR]
        [--out benchmarks/results/training_window.json]

Simulates `--days` default days once, then for each window size (a trailing `w`: with
train.warm_start) makes a workspace of its own
(`python -m pipeline init`, the same raw days) and runs every day through the whole retrain with
`python -m pipeline repro --day D`, one day after the other, as the DAG and a backfill do. Each day's
evaluate metrics score, on that day's held-out last requests and with the simulator's true relevance
as the gain (ndcg_at_10_true):
  - the champion serving when the day arrived (trained on the days before it): next-day quality;
  - the day's candidate (trained on the window ending at the day, evaluated on later rows);
  - the random and logging-order baselines on the same rows.
With --resume, a workspace already in --work keeps the days its git history has committed (their
records read back from the DVC cache through each day's dvc.lock) and runs the rest.
With --cache, every workspace uses that DVC cache, so a warm-start history run after the scratch
one of the same window restores the stages before train from the run cache. Both workspaces see the same days and the same held-out rows, so the rows of a day line up.
Prints one table (a row per day) and the means, with the seconds each run took, and writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIRST_DAY = "2026-11-01"
PRIMARY = "ndcg_at_10_true"
TRAINED = re.compile(r"train: \S+ \d+ rows x \d+ epochs \(\d+ steps\) on \S+ in ([\d.]+)s")


def pipeline(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                            text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"python -m pipeline {' '.join(args)} failed:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def workspace_for(work: Path, name: str, params: dict, raw: Path) -> Path:
    path = work / name
    params_file = work / f"{name}.params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline(["init", str(path), "--params", str(params_file), "--force"], ROOT)
    shutil.rmtree(path / "data" / "raw", ignore_errors=True)
    shutil.copytree(raw, path / "data" / "raw")
    return path


def train_seconds(output: str) -> float | None:
    """The train stage's own time (its loop and calibration) from the line it prints."""
    found = TRAINED.search(output)
    return float(found.group(1)) if found else None


# What a day's record is read from: evaluate's metrics, train's metrics, the gate's decision (outcome's order).
OUTPUTS = ("work/evaluate/metrics.json", "work/train/metrics.json", "work/gate/decision.json")


def outcome(evaluated: dict, trained: dict, decision: dict) -> dict:
    """A day's scores, window and decision from its evaluate, train and gate outputs."""
    overall = evaluated["ranking"]["slices"]["overall"]
    return {"champion": (overall.get("champion") or {}).get(PRIMARY),
            "candidate": (overall.get("candidate") or {}).get(PRIMARY),
            "random": (overall.get("random") or {}).get(PRIMARY),
            "logging_order": (overall.get("logging_order") or {}).get(PRIMARY),
            "window_days": trained["window"]["days"], "fitted_days": trained["window"]["fitted_days"],
            "warm_start": trained["warm_start"]["from"], "train_rows": trained["train_rows"],
            "decision": decision.get("decision")}


def day_record(workspace: Path, day: str, seconds: float, code: int, output: str) -> dict:
    record = {"day": day, "exit": code, "seconds": round(seconds, 1)}
    if code != 0:
        return record
    read = [json.loads((workspace / path).read_text()) for path in OUTPUTS]
    return {**record, **outcome(*read), "train_seconds": train_seconds(output)}


def cached_output(workspace: Path, commit: str, path: str) -> dict:
    """A DVC-tracked JSON output as the day's commit recorded it, read from the workspace's cache."""
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{commit}:dvc.lock"], cwd=workspace, check=True,
                                         capture_output=True, text=True).stdout)
    cache = Path(subprocess.run([str(Path(sys.executable).parent / "dvc"), "cache", "dir"], cwd=workspace,
                                check=True, capture_output=True, text=True).stdout.strip())
    for stage in lock["stages"].values():
        for out in [*stage.get("outs", []), *stage.get("metrics", [])]:
            if out["path"] == path:
                return json.loads((cache / "files" / "md5" / out["md5"][:2] / out["md5"][2:]).read_text())
    raise SystemExit(f"{workspace}: {commit}'s dvc.lock has no {path}")


def committed_days(workspace: Path) -> dict[str, str]:
    """{day: commit} of the days the workspace's history committed ("sieve DAY: DECISION, ...")."""
    log = subprocess.run(["git", "log", "--format=%H %s"], cwd=workspace, capture_output=True, text=True).stdout
    found = (re.match(r"(\w+) sieve (\d{4}-\d{2}-\d{2}):", line) for line in log.splitlines())
    return {match.group(2): match.group(1) for match in found if match}


def resumed_record(workspace: Path, day: str, commit: str) -> dict:
    """A committed day's record, as day_record made it, without its seconds (not kept)."""
    read = [cached_output(workspace, commit, path) for path in OUTPUTS]
    return {"day": day, "exit": 0, "seconds": None, "resumed": True, **outcome(*read), "train_seconds": None}


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 6) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--windows", default="1,7,7w",
                        help="window sizes (train.window_days) compared; a trailing w: with train.warm_start")
    parser.add_argument("--cache", type=Path, default=None,
                        help="one DVC cache for every workspace (e.g. an earlier run's window-7/.dvc/cache): a "
                             "history that differs only in train knobs then reruns only train and what follows")
    parser.add_argument("--jobs", type=int, default=1, help="window sizes run at the same time")
    parser.add_argument("--impressions", type=int, default=None, help="impressions per day (default: params)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the days the workspaces in --work already committed and run the rest")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/training_window"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_window.json")
    args = parser.parse_args()
    windows = args.windows.split(",")
    params = yaml.safe_load(args.params.read_text())
    if args.impressions:
        params["simulate"]["impressions_per_day"] = args.impressions
    args.work.mkdir(parents=True, exist_ok=True)
    raw = args.work / "raw"
    if not raw.is_dir():
        (args.work / "sim.params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        pipeline(["simulate", "--start", FIRST_DAY, "--days", str(args.days), "--params",
                  str(args.work / "sim.params.yaml"), "--out", str(raw)], ROOT)
    days = [(date.fromisoformat(FIRST_DAY) + timedelta(days=k)).isoformat() for k in range(args.days)]
    def history(size: str) -> list[dict]:
        config = {**params, "train": {**params["train"], "window_days": int(size.rstrip("w")),
                                      "warm_start": size.endswith("w")}}
        workspace = args.work / f"window-{size}"
        resumed = args.resume and (workspace / ".git").is_dir()
        done = committed_days(workspace) if resumed else {}
        if not resumed:
            workspace = workspace_for(args.work, f"window-{size}", config, raw)
        else:  # a run stopped mid-day leaves its lease behind
            pipeline(["lease", "--workspace", str(workspace), "--break"], workspace, check=False)
        if args.cache:  # stages whose inputs another history already ran come back from DVC's run cache
            subprocess.run([str(Path(sys.executable).parent / "dvc"), "cache", "dir", str(args.cache)],
                           cwd=workspace, check=True, capture_output=True)
        records = []
        for day in days:
            if day in done:
                records.append(resumed_record(workspace, day, done[day]))
                print(f"window {size}: {json.dumps(records[-1])}", flush=True)
                continue
            started = time.perf_counter()
            ran = pipeline(["repro", "--workspace", str(workspace), "--day", day], workspace, check=False)
            records.append(day_record(workspace, day, time.perf_counter() - started, ran.returncode,
                                      ran.stdout + ran.stderr))
            print(f"window {size}: {json.dumps(records[-1])}", flush=True)
        return records

    # Each history in its own workspace; --jobs > 1 runs them side by side (their seconds then share the CPUs).
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(windows, pool.map(history, windows)))
    header = f"{'day':<12}" + "".join(f"{f'champion w={s}':>16}" for s in windows) + \
        "".join(f"{f'candidate w={s}':>17}" for s in windows) + f"{'random':>10}{'logging':>10}"
    print(header)
    for k, day in enumerate(days):
        row = [results[s][k] for s in windows]
        cells = "".join(f"{r.get('champion') or float('nan'):>16.4f}" for r in row)
        cells += "".join(f"{r.get('candidate') or float('nan'):>17.4f}" for r in row)
        print(f"{day:<12}{cells}{row[0].get('random') or float('nan'):>10.4f}"
              f"{row[0].get('logging_order') or float('nan'):>10.4f}")
    summary = {s: {"champion_mean": mean(r.get("champion") for r in results[s]),
                   "candidate_mean": mean(r.get("candidate") for r in results[s]),
                   "seconds_mean": mean(r.get("seconds") for r in results[s]),
                   "train_seconds_mean": mean(r.get("train_seconds") for r in results[s])} for s in windows}
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "training_window", "days": days, "windows": windows,
                                    "impressions_per_day": params["simulate"]["impressions_per_day"],
                                    "jobs": args.jobs,
                                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                    "summary": summary, "per_day": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
