"""params.yaml: the one place every knob lives."""
from __future__ import annotations

import hashlib
from pathlib import Path

import yaml


def load_params(path: str | Path = "params.yaml") -> dict:
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def stage_seed(params: dict, stage: str) -> int:
    """A stable per-stage seed derived from the root seed, so stages do not share random streams."""
    digest = hashlib.sha256(f"{params['seed']}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
