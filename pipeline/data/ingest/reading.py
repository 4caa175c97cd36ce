"""Reading ingest's inputs: Parquet or CSV files, opened without reading their rows, then streamed.

`open_source` checks a file opens and reads its column names (CSV columns all as text, so the
cast stays row by row); `batches` and `chunks` stream its rows in bounded memory, turning a read
failure midway into a ContractError that names the file; `expand_inputs` resolves the glob
patterns of --impressions. `one_line` keeps an error message on one line for stderr.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.data.contract import ContractError


@dataclass
class Source:
    path: str
    fmt: str               # "csv" or "parquet"
    schema: pa.Schema      # as read (CSV: every column as text)

    @property
    def name(self) -> str:
        return Path(self.path).name


def one_line(exc, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _file_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ContractError(f"{path}: unknown file type (expected .parquet, .pq, .csv or .csv.gz)")


def _read_error(path: str, fmt: str, exc: Exception) -> ContractError:
    text = one_line(exc)
    if fmt == "csv" and ("UTF8" in text or "UTF-8" in text):
        return ContractError(f"{path}: not UTF-8 text ({text})")
    return ContractError(f"{path}: cannot be read as {'Parquet' if fmt == 'parquet' else 'CSV'} ({text})")


def _csv_options(columns: list[str] | None, block_bytes: int, include: list[str] | None = None):
    convert = pacsv.ConvertOptions(
        # Every column as text: the cast is ours, row by row, so a bad value quarantines one row
        # instead of failing the file; empty fields are nulls (CSV has no other way to write one).
        column_types={name: pa.string() for name in columns or []},
        strings_can_be_null=True, quoted_strings_can_be_null=True, null_values=[""],
        include_columns=include or [])
    return pacsv.ReadOptions(block_size=block_bytes), convert


def open_source(path: str, block_bytes: int) -> Source:
    """Check a file can be opened and read its column names, without reading its rows."""
    fmt = _file_format(path)
    if not os.path.isfile(path):
        raise ContractError(f"{path}: no such file")
    try:
        if fmt == "parquet":
            schema = pq.read_schema(path)
        else:
            read, convert = _csv_options(None, block_bytes)
            names = pacsv.open_csv(path, read_options=read, convert_options=convert).schema.names
            schema = pa.schema([(name, pa.string()) for name in names])
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise _read_error(path, fmt, exc) from exc
    dupes = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if dupes:
        raise ContractError(f"{path}: duplicate column name(s) {', '.join(dupes)}")
    return Source(path, fmt, schema)


def batches(source: Source, block_bytes: int, batch_rows: int,
             include: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The file's record batches; a read failure midway becomes a ContractError naming the file."""
    try:
        if source.fmt == "parquet":
            # pre_buffer caches the ranges it has read for the whole file: memory would grow with the input.
            reader = pq.ParquetFile(source.path, pre_buffer=False).iter_batches(batch_size=batch_rows,
                                                                                columns=include)
        else:
            read, convert = _csv_options(source.schema.names, block_bytes, include)
            reader = pacsv.open_csv(source.path, read_options=read, convert_options=convert)
        while True:
            try:
                batch = next(reader)
            except StopIteration:
                return
            yield batch
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise _read_error(source.path, source.fmt, exc) from exc


def chunks(source: Source, rows: int, block_bytes: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last one shorter), whatever the reader's own batch sizes,
    so the output does not depend on the input's row groups or CSV blocks."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches(source, block_bytes, rows):
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named or matched by glob patterns, sorted within each pattern, each once."""
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matched:
                raise ContractError(f"{pattern}: no file matches")
        else:
            matched = [pattern]
        files += [p for p in matched if p not in files]
    return files
