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
# One DVC stage per shard: `importance_shard@K` scores shard K of importance.shards; the bare name runs all.
SHARD_STAGE = "importance_shard"
SHARDS_DIR = Path("work") / "importance_shards"
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


def shard_dir(index: int, count: int) -> Path:
    return SHARDS_DIR / f"{index}-of-{count}"


def dvc_stage_names(count: int) -> list[str]:
    """The names dvc.yaml gives the stages (and dvc.lock records) with `count` importance shards."""
    return [name for stage in STAGES
            for name in ([f"{SHARD_STAGE}@{k}" for k in range(count)] if stage == SHARD_STAGE else [stage])]


def context_yaml(day: str, count: int) -> str:
    shards = [{"index": k, "count": count} for k in range(count)]
    dirs = " ".join(shard_dir(k, count).as_posix() for k in range(count))
    return yaml.safe_dump({"day": day, "importance_shards": shards, "importance_shard_dirs": dirs},
                          sort_keys=False)


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
