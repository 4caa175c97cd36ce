"""The retrain's run plan: stage names, the importance shard plan, the exit codes and the environment
DVC runs the stages in. What dags/ and plugins/ import; light on purpose (no pandas, no torch), since
every DAG parse loads it.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

from pipeline.params import load_params

STAGES = ("validate", "corpus", "pretrain", "importance_shard", "importance", "train", "evaluate", "gate", "promote")
# Stages that change the registry beside writing their outputs: never restored from DVC's run cache.
REGISTRY_STAGES = ("promote",)
# One DVC stage per window day and shard (`importance_shard@DAY-K` in dvc.yaml). To repro and the DAG,
# `importance_shard@K` is shard K of every day in the training window; the bare name runs all shards.
SHARD_STAGE = "importance_shard"
SHARDS_DIR = Path("work") / "importance_shards"
# The per-day importance (`importance@DAY`): each window day's scores and weights, scored once per day.
IMPORTANCE_STAGE = "importance"
IMPORTANCE_DIR = Path("work") / "importance"
# Stages DVC runs once per day of the training window.
PER_DAY_STAGES = (SHARD_STAGE, IMPORTANCE_STAGE)
SHARD_TARGET = re.compile(rf"^{SHARD_STAGE}@(\d+)$")
# Exit code for "the day's data was rejected": retrying cannot help, unlike a crash.
EXIT_DATA_REJECTED = 3
# First words of the line that reports a rejection (the DAG shows that line as the failure reason).
REJECTION_PREFIX = "repro: validate rejected the day:"
# Exit code for "another run holds the workspace" (pipeline/ops/lease.py).
EXIT_LEASE_HELD = 4


def shard_count(params: dict) -> int:
    count = params["importance"].get("shards", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"importance.shards must be a whole number of at least 1, got {count!r}")
    return count


def shard_indices(workspace: str | Path) -> list[int]:
    """The importance shards of the workspace's params: what the DAG maps its scoring task over."""
    return list(range(shard_count(load_params(Path(workspace) / "params.yaml"))))


def shard_dir(day: str, index: int, count: int) -> Path:
    return SHARDS_DIR / f"dt={day}" / f"{index}-of-{count}"


def day_shard_name(day: str, index: int) -> str:
    """The key of a day's shard in run/context.yaml, and so the DVC stage's name after the @."""
    return f"{day}-{index}"


def dvc_targets(stage: str, window: list[str]) -> list[str]:
    """The DVC stages a repro stage name stands for: per-day stages once per window day."""
    shard = SHARD_TARGET.match(stage)
    if shard:
        return [f"{SHARD_STAGE}@{day_shard_name(day, int(shard.group(1)))}" for day in window]
    if stage == IMPORTANCE_STAGE:
        return [f"{IMPORTANCE_STAGE}@{day}" for day in window]
    return [stage]


def dvc_stage_names(count: int, window: list[str]) -> list[str]:
    """The names dvc.yaml gives the stages (and dvc.lock records) with `count` importance shards and the
    training window's days `window`."""
    names = []
    for stage in STAGES:
        if stage == SHARD_STAGE:
            names += [f"{SHARD_STAGE}@{day_shard_name(day, k)}" for day in window for k in range(count)]
        else:
            names += dvc_targets(stage, window)
    return names


def context_yaml(day: str, count: int, window: list[str] | None = None) -> str:
    """run/context.yaml: the day, the training window's days (oldest first, `day` last) and the per-day
    importance stages' items, which dvc.yaml's foreach loops read."""
    window = list(window or [day])
    shards = {day_shard_name(d, k): {"day": d, "index": k, "count": count} for d in window for k in range(count)}
    days = {d: {"shard_dirs": " ".join(shard_dir(d, k, count).as_posix() for k in range(count))} for d in window}
    return yaml.safe_dump({"day": day, "window": window, "shard_count": count, "importance_shards": shards,
                           "importance_days": days}, sort_keys=False)


def read_context(workspace: Path) -> dict:
    """run/context.yaml as written by context_yaml (empty when there is none)."""
    path = Path(workspace) / "run" / "context.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def validate_dir(workspace: Path, day: str) -> Path:
    return workspace / "work" / "validate" / f"dt={day}"


def missing_inputs(workspace: Path, day: str) -> list[str]:
    """The day's raw folders that are not there yet (dvc.yaml reads them from data/raw)."""
    raw = workspace / "data" / "raw"
    return [str(p) for p in (raw / "impressions" / f"dt={day}", raw / "catalog" / f"dt={day}") if not p.is_dir()]


def dvc_env() -> dict:
    """The environment `dvc` and the stage commands it starts run in."""
    env = dict(os.environ)
    # Stage commands say `python`: make it this interpreter, whatever PATH the caller had.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    return env
