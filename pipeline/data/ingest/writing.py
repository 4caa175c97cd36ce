"""Writing the output: impression rows into per-day part files, bad rows into quarantine files.

Everything here writes into ingest's staging folder inside OUT; the command moves the finished day
folders into place only after every input was read in full. `DayParts` holds rows per UTC day and
writes a day's next part when it has `chunk_rows` of them; `QuarantineWriter` streams one input's
bad rows; `quarantine_names` names those files; `remove_dead_staging` clears the staging of a
killed run.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import pid_alive
from pipeline.data.ingest.columns import DAY_US


def _day_name(index: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=int(index))).isoformat()


class DayParts:
    """Rows per day, held until a day has `rows` of them, then written as its next part file.

    Memory stays bounded: when all days together hold more than twice `rows`, the largest is written
    early. Part names count up per day, so a day's rows keep the input's order across its parts."""

    def __init__(self, root: Path, rows: int):
        self.root, self.rows = root, rows
        self.held: dict[str, list[pa.Table]] = {}
        self.count: Counter = Counter()
        self.parts: Counter = Counter()
        self.written: Counter = Counter()

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        us = pc.cast(table.column("ts"), pa.int64()).to_numpy()
        days = us // DAY_US
        if len(days) > 1 and (np.diff(days) < 0).any():
            order = np.argsort(days, kind="stable")
            table, days = table.take(pa.array(order)), days[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(days)) + 1])
        ends = np.append(starts[1:], len(days))
        for start, end in zip(starts, ends):
            day = _day_name(days[start])
            self.held.setdefault(day, []).append(table.slice(start, end - start))
            self.count[day] += int(end - start)
            if self.count[day] >= self.rows:
                self.flush(day)
        while sum(self.count.values()) > 2 * self.rows:
            self.flush(max(self.count, key=lambda d: (self.count[d], d)))

    def flush(self, day: str) -> None:
        tables = self.held.pop(day, [])
        rows = self.count.pop(day, 0)
        if not rows:
            return
        folder = self.root / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), folder / f"part-{self.parts[day]:05d}.parquet")
        self.parts[day] += 1
        self.written[day] += rows

    def close(self) -> None:
        for day in sorted(self.held):
            self.flush(day)


class QuarantineWriter:
    """Bad rows of one input file, streamed to a staged Parquet file opened on the first bad row."""

    def __init__(self, path: Path):
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def quarantine_names(paths: list[str]) -> dict[str, str]:
    """A quarantine file name per input: its base name, or its path relative to the inputs' common
    folder where two inputs share a base name."""
    names = {p: Path(p).name for p in paths}
    if len(set(names.values())) < len(names):
        common = os.path.commonpath([os.path.abspath(p) for p in paths])
        for p in paths:
            names[p] = os.path.relpath(os.path.abspath(p), common).replace(os.sep, "__")
    return {p: f"{name}.parquet" for p, name in names.items()}


def remove_dead_staging(out: Path) -> None:
    """Staging left behind by an ingest that was killed (its process is gone)."""
    for folder in out.glob(".ingest-staging-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
