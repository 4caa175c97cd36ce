"""The data contract (DATA_CONTRACT.md) in code: columns, types, the layout on disk, and readers."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.days import parse_day  # noqa: F401  (the layout's day format, re-exported)

IMPRESSION_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("request_id", pa.string()),
    ("user_id", pa.string()),
    ("session_id", pa.string()),
    ("surface", pa.string()),
    ("query", pa.string()),
    ("item_id", pa.string()),
    ("position", pa.int64()),
    ("clicked", pa.int64()),
    ("purchased", pa.int64()),
    ("propensity", pa.float64()),
    ("price", pa.float64()),
])
CATALOG_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("title", pa.string()),
    ("category", pa.string()),
    ("brand", pa.string()),
    ("price", pa.float64()),
])
TRUTH_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("is_noise", pa.bool_()),
    ("noise_kind", pa.string()),
    ("relevance", pa.float64()),
])
IMPRESSION_COLUMNS = IMPRESSION_SCHEMA.names
CATALOG_COLUMNS = CATALOG_SCHEMA.names
SURFACES = ("search", "recommend")
EXTRA_FEATURE_PREFIX = "f_"


class ContractError(Exception):
    """A file cannot be read as the contract says (missing, unreadable, wrong shape)."""


@dataclass(frozen=True)
class DayPaths:
    root: Path
    day: str  # YYYY-MM-DD

    @property
    def impressions_dir(self) -> Path:
        return self.root / "impressions" / f"dt={self.day}"

    @property
    def catalog_file(self) -> Path:
        return self.root / "catalog" / f"dt={self.day}" / "catalog.parquet"

    @property
    def truth_file(self) -> Path:
        return self.root / "_truth" / f"dt={self.day}" / "truth.parquet"


def files_digest(files: list[Path]) -> str:
    """sha256 over each file's name and bytes, in the order given, read in blocks."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def days_on_disk(data_dir: str | Path) -> list[str]:
    """The days that have an impressions/dt=YYYY-MM-DD folder, oldest first."""
    return sorted(p.name[3:] for p in (Path(data_dir) / "impressions").glob("dt=*") if p.is_dir())


def impression_parts(paths: DayPaths) -> list[Path]:
    if not paths.impressions_dir.is_dir():
        raise ContractError(f"{paths.impressions_dir}: no impressions folder for day {paths.day}")
    parts = sorted(paths.impressions_dir.glob("part-*.parquet"))
    if not parts:
        raise ContractError(f"{paths.impressions_dir}: no part-*.parquet files for day {paths.day}")
    return parts


def _read_table(path: Path, columns: list[str] | None = None, dictionary=()) -> pa.Table:
    return _parquet(path, pq.read_table, columns=columns, read_dictionary=list(dictionary) or None)


def _parquet(path: Path, read, **kwargs):
    """`read(path, **kwargs)` with an unreadable file reported as a ContractError naming it."""
    try:
        return read(path, **kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise ContractError(f"{path}: cannot be read as Parquet ({exc})") from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    return _read_table(path).to_pandas()


def read_impressions(data_dir: str | Path, day: str) -> pd.DataFrame:
    """All impressions of one day, parts concatenated in file order."""
    frames = [_read_parquet(part) for part in impression_parts(DayPaths(Path(data_dir), day))]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def same_event_ids(a: pd.Series, b: pd.Series) -> bool:
    """Whether two event_id columns hold the same ids in the same order; compared as Arrow strings, so
    no Python string object is made per row (to_numpy() would make 10M of them for a 10M-row log)."""
    return len(a) == len(b) and bool((a.reset_index(drop=True) == b.reset_index(drop=True)).all())


# Ids whose values repeat across rows and that are only grouped and compared: read as pandas
# categoricals (an integer code per row and each distinct id once) instead of one string per row.
# With the 0/1 labels as int8, a loaded 10M-row log takes about 110 bytes a row instead of 160.
REPEATED_COLUMNS = ("request_id", "user_id", "session_id")
LABEL_COLUMNS = ("clicked", "purchased")


def read_impressions_of_days(data_dir: str | Path, days: list[str], extra_features: bool = False,
                             columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The impressions of several validated days as one frame, converted from Arrow once and column by
    column (`self_destruct`), so a 10M-row log never exists twice in memory as it would via pd.concat.
    The contract's columns (only `columns` of them when given: a reader that needs a few never holds a
    whole day), and with `extra_features` the optional f_* columns of any part (null where a part lacks
    one). Repeated ids and string f_* come back as categoricals and the labels as int8."""
    names = IMPRESSION_SCHEMA.names if columns is None else [n for n in IMPRESSION_SCHEMA.names if n in columns]
    repeated = tuple(n for n in REPEATED_COLUMNS if n in names)
    tables = []
    for part in (part for day in days for part in impression_parts(DayPaths(Path(data_dir), day))):
        schema = _parquet(part, pq.read_schema) if extra_features else None
        extra = [field for field in schema if field.name.startswith(EXTRA_FEATURE_PREFIX)] if extra_features else []
        strings = tuple(field.name for field in extra if pa.types.is_string(field.type))
        tables.append(_read_table(part, names + [field.name for field in extra], dictionary=repeated + strings))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise ContractError(f"{data_dir}: the parts of {', '.join(days)} disagree on a column's type ({exc})") from exc
    del tables
    table = table.unify_dictionaries()
    for name in (n for n in LABEL_COLUMNS if n in names):
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(pa.int8()))
    return table.to_pandas(self_destruct=True, split_blocks=True)


def read_catalog(data_dir: str | Path, day: str) -> pd.DataFrame:
    path = DayPaths(Path(data_dir), day).catalog_file
    if not path.is_file():
        raise ContractError(f"{path}: the catalog for day {day} is missing")
    return _read_parquet(path)
