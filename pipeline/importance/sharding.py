"""Shards of a log for scoring in parallel: `--shard i/n` scores the rows of shard i (0 <= i < n), and
the shards' score files are combined into one before weighting.

Rows are assigned by session, so a session's rows stay together (session-level estimators such as the
click model see whole sessions either way), and by a hash of the session id, so the assignment does
not depend on the order of the rows, the days in the log or the machine.
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SHARD_FILE = "shard.json"
SHARD_PATTERN = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    match = SHARD_PATTERN.match(text.strip())
    if not match:
        raise ValueError(f"--shard must be i/n with 0 <= i < n (for example 0/4), got {text!r}")
    shard = Shard(int(match.group(1)), int(match.group(2)))
    if not 0 <= shard.index < shard.count:
        raise ValueError(f"--shard {text}: the shard index must be at least 0 and below the shard count "
                         f"{shard.count}")
    return shard


def shard_of_sessions(sessions: pd.Series, count: int) -> np.ndarray:
    """The shard number of each row, from a CRC-32 of its session id (stable across runs and machines)."""
    unique = pd.unique(sessions.astype(str))
    number = {s: zlib.crc32(s.encode("utf-8")) % count for s in unique}
    return sessions.astype(str).map(number).to_numpy(dtype=np.int64)


def shard_rows(sessions: pd.Series, shard: Shard) -> np.ndarray:
    """Indices of the rows in `shard`, in log order."""
    return np.flatnonzero(shard_of_sessions(sessions, shard.count) == shard.index)


def write_shard(folder: Path, scores: pd.DataFrame, estimator: str, shard: Shard, events_in_log: int) -> None:
    """A shard's output: its raw scores (no weights: those need every shard) and what it covers."""
    scores.to_parquet(folder / "scores.parquet", index=False)
    (folder / SHARD_FILE).write_text(json.dumps({
        "estimator": estimator, "shard": shard.index, "shards": shard.count,
        "events": int(len(scores)), "events_in_log": int(events_in_log)}, indent=2) + "\n")


def read_shards(folders: list[str | Path], estimator: str) -> pd.DataFrame:
    """Every shard of one scoring run, checked for completeness: same estimator, same shard count, each
    shard exactly once. Returns the scores of all shards (event_id, score)."""
    if not folders:
        raise ValueError("--combine needs the output folders of the shards")
    metas, frames = [], []
    for folder in map(Path, folders):
        meta_file = folder / SHARD_FILE
        if not meta_file.is_file() or not (folder / "scores.parquet").is_file():
            raise ValueError(f"{folder}: not a shard output (no {SHARD_FILE} and scores.parquet in it)")
        meta = json.loads(meta_file.read_text())
        if meta["estimator"] != estimator:
            raise ValueError(f"{folder}: shard scored with {meta['estimator']!r}, not {estimator!r}")
        metas.append(meta)
        frames.append(pd.read_parquet(folder / "scores.parquet"))
    counts = {m["shards"] for m in metas}
    if len(counts) != 1:
        raise ValueError(f"the shards disagree on the shard count: {sorted(counts)}")
    count = counts.pop()
    seen = sorted(m["shard"] for m in metas)
    if seen != list(range(count)):
        missing = sorted(set(range(count)) - set(seen))
        doubled = sorted({s for s in seen if seen.count(s) > 1})
        raise ValueError(f"shards of {count}: missing {missing or 'none'}, given twice {doubled or 'none'}")
    return pd.concat(frames, ignore_index=True)
