"""How long a rerun of a completed day takes when it is served from DVC's run cache.

    python benchmarks/rerun_cache.py [--impressions 50000] [--workdir DIR] [--params params.yaml]
        [--out benchmarks/results/rerun_cache.json]

Builds a fresh DVC workspace (git + dvc init, this repository's dvc.yaml, pipeline/ and params),
simulates one day, runs every stage with `python -m pipeline repro`, then deletes work/ and
dvc.lock (only DVC's cache remembers the run) and runs the day again. Checks that no stage but
promote ran the second time (promote always runs: it changes the registry, which the run cache does
not restore) and that every output hash is the same, and prints the second run's time as a share of
the first's against the 10% target.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.10
DAY = "2026-11-01"


def sh(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def workspace(root: Path, params: dict) -> Path:
    ws = root / "ws"
    ws.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", ws)
    shutil.copy(REPO / ".dvcignore", ws)
    shutil.copytree(REPO / "pipeline", ws / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], ws)
    sh([sys.executable, "-m", "dvc", "init", "-q"], ws)
    return ws


def out_hashes(ws: Path) -> dict:
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    return {stage: {o["path"]: o.get("md5") for o in body.get("outs", [])} for stage, body in lock["stages"].items()}


def timed_repro(ws: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = sh([sys.executable, "-m", "pipeline", "repro", "--workspace", str(ws), "--day", DAY], ws)
    return time.perf_counter() - started, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impressions", type=int, default=None, help="impressions of the day (default: params)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/rerun_cache.json"))
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    if args.impressions:
        params["simulate"]["impressions_per_day"] = args.impressions
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sieve-rerun-"))
    ws = workspace(root, params)
    sh([sys.executable, "-m", "pipeline", "simulate", "--start", DAY, "--days", "1", "--params", "params.yaml",
        "--out", "data/raw"], ws)
    first, first_log = timed_repro(ws)
    hashes = out_hashes(ws)
    shutil.rmtree(ws / "work")
    (ws / "dvc.lock").unlink()
    again, again_log = timed_repro(ws)
    recomputed = again_log.count("Running stage") - again_log.count("Running stage 'promote'")
    identical = out_hashes(ws) == hashes
    ratio = again / first
    result = {"benchmark": "rerun_cache", "day": DAY,
              "impressions": params["simulate"]["impressions_per_day"],
              "first_run_seconds": round(first, 2), "rerun_seconds": round(again, 2),
              "ratio": round(ratio, 4), "target": TARGET, "meets_target": ratio <= TARGET,
              "stages_run_first": first_log.count("Running stage"), "stages_recomputed": recomputed,
              "outputs_identical": identical,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}}
    print(f"first run {first:.1f} s, rerun from the run cache {again:.1f} s: ratio {ratio:.3f} "
          f"(target <= {TARGET}); stages recomputed: {recomputed}; outputs identical: {identical}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if identical and recomputed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
