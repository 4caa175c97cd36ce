"""The ingest stage: bring a user's own logs (Parquet or CSV) into the data contract's layout.

`python -m pipeline ingest --impressions FILE_OR_GLOB [...] --catalog FILE [--mapping mapping.yaml]
--out data/raw [--params params.yaml]`

Reads the impressions (one file, several, or a glob; .parquet/.pq or .csv/.csv.gz with a UTF-8 header) and
one catalog file, renames columns as the mapping says, casts them to the contract's Arrow types and writes
OUT/impressions/dt=DAY/part-NNNNN.parquet plus OUT/catalog/dt=DAY/catalog.parquet for every UTC day the
impressions touch. A day folder is replaced whole, never appended to. Input is streamed in chunks of
`ingest.chunk_rows` rows, so memory does not grow with the input.

Rows that cannot be cast (a ts that does not parse, a position that is not a number, clicked not 0/1, ...)
go to OUT/_quarantine/ingest/<input file name>.parquet with every original column as text plus `reason`,
`source_file` and `source_row` (1 = the first data row). Contract rules (unique ids, positions >= 1,
items in the catalog, ...) are the validate stage's job, not this one's.

The mapping file (all keys optional):

    columns: {their_name: contract_name}     # impressions; a target starting with f_ keeps a feature
    catalog_columns: {their_name: contract_name}
    features: [device, tenure]               # extra columns kept as f_device, f_tenure; or a
                                             # {name: int|float|string} mapping to fix their types
    ts_format: "%Y-%m-%d %H:%M:%S"          # strptime format of ts text (default ISO 8601)
    ts_unit: ms                              # ts holds epoch numbers in s, ms, us or ns
    ts_timezone: Europe/Berlin               # zone of times without an offset (default UTC); times
                                             # with an offset keep it; wall-clock times a DST change
                                             # skips or repeats are quarantined
    set: {contract_name: constant or rule}   # columns the log lacks: constants, ids derived from the
    catalog_set: {contract_name: ...}        # row (hash, row, session), text from fields (template,
                                             # join), copy; see pipeline/data/ingest_set.py

Impression columns other than the contract's, f_* columns and listed features are dropped, with a note.
Contract columns that may be null (query, propensity, price; category, brand, price in the catalog) are
filled with nulls when absent; any other column neither in the input nor under set: is an error, and
every such column of every input is named in one message.

Exit 0: done. Exit 2: an input cannot be read at all (missing, not Parquet, not UTF-8, a required column
missing after mapping, a column of a type that cannot hold its contract type) or the mapping is invalid;
one line on stderr names the file and the problem, and nothing is written.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from pipeline.atomic import atomic_dir, pid_alive
from pipeline.data.contract import (
    CATALOG_SCHEMA,
    EXTRA_FEATURE_PREFIX,
    IMPRESSION_SCHEMA,
    ContractError,
    DayPaths,
)
from pipeline.data.ingest_set import (
    Rule,
    fill_template,
    hash_ids,
    join_values,
    ordered,
    parse_rule,
    row_ids,
    session_ids,
    text_of,
)
from pipeline.params import load_params

DEFAULTS = {"chunk_rows": 500_000, "csv_block_bytes": 8 << 20}
IMPRESSIONS, CATALOG = "impressions", "catalog"
NULLABLE = {IMPRESSIONS: {"query", "propensity", "price"}, CATALOG: {"category", "brand", "price"}}
# How each contract column is read: ids and text, integers, 0/1 flags, floats, the UTC timestamp.
KINDS = {
    IMPRESSIONS: {"event_id": "string", "ts": "ts", "request_id": "string", "user_id": "string",
                  "session_id": "string", "surface": "string", "query": "string", "item_id": "string",
                  "position": "int", "clicked": "flag", "purchased": "flag", "propensity": "float",
                  "price": "float"},
    CATALOG: {"item_id": "string", "title": "string", "category": "string", "brand": "string",
              "price": "float"},
}
SCHEMAS = {IMPRESSIONS: IMPRESSION_SCHEMA, CATALOG: CATALOG_SCHEMA}
FEATURE_TYPES = {"int": "int", "int64": "int", "integer": "int", "float": "float", "float64": "float",
                 "double": "float", "string": "text", "str": "text", "category": "text"}
FEATURE_ARROW = {"int": pa.int64(), "float": pa.float64(), "text": pa.string()}
TS_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}
MAPPING_KEYS = ("columns", "catalog_columns", "features", "ts_format", "ts_unit", "ts_timezone", "set",
                "catalog_set")
SET_KEYS = {IMPRESSIONS: "set", CATALOG: "catalog_set"}
# Rules that make text: they can only fill text columns (ids, surface, query, title, ...).
TEXT_RULES = ("hash", "row", "session", "template", "join")
QUARANTINE_EXTRA = ("reason", "source_file", "source_row")
TS_TYPE = pa.timestamp("us", tz="UTC")
DAY_US = 86_400 * 1_000_000
# Day folders are named YYYY-MM-DD, so a ts must fall in years 1000-9999 to have one.
MIN_US = (date(1000, 1, 1) - date(1970, 1, 1)).days * DAY_US
MAX_US = (date(9999, 12, 31) - date(1970, 1, 1)).days * DAY_US + DAY_US

# Text accepted as numbers (after trimming whitespace). Integers may carry a zero fraction ("3.0"),
# as tools that turn int columns into floats write them; 18 digits keep them inside int64.
INT_RE = r"^[+-]?\d{1,18}(\.0*)?$"
STRICT_INT_RE = r"^[+-]?\d{1,18}$"
EPOCH_INT_RE = r"^[+-]?\d{1,19}$"  # epoch nanoseconds have 19 digits; values past int64 fail the cast
FLOAT_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^(?i:[+-]?nan)$"
ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
OFFSET_RE = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)$"

Log = Callable[[str], None]


# ---------------------------------------------------------------- params and mapping


def ingest_params(params: dict | None) -> dict:
    section = {**DEFAULTS, **((params or {}).get("ingest") or {})}
    for key in DEFAULTS:
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ingest.{key} must be a positive integer, got {value!r}")
    return section


@dataclass(frozen=True)
class Mapping:
    columns: dict = field(default_factory=dict)          # impressions: their name -> output name
    catalog_columns: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)         # their name -> declared kind or None
    ts_format: str | None = None
    ts_unit: str | None = None
    ts_timezone: str | None = None
    set_rules: tuple = ()                                # impressions: Rule per set column, in evaluation order
    catalog_set_rules: tuple = ()

    def rules(self, table: str) -> tuple:
        return self.catalog_set_rules if table == CATALOG else self.set_rules

    def renames(self, table: str) -> dict[str, str]:
        if table == CATALOG:
            return dict(self.catalog_columns)
        renames = dict(self.columns)
        for name in self.features:
            renames[name] = name if name.startswith(EXTRA_FEATURE_PREFIX) else EXTRA_FEATURE_PREFIX + name
        return renames

    def declared_kind(self, output_name: str) -> str | None:
        for name, kind in self.features.items():
            if kind and self.renames(IMPRESSIONS)[name] == output_name:
                return kind
        return None


def load_mapping(path: str | Path | None) -> Mapping:
    if path is None:
        return Mapping()
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ContractError(f"{path}: cannot be read as a YAML mapping file ({_one_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(MAPPING_KEYS))
    if unknown:
        raise ContractError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; "
                            f"expected {', '.join(MAPPING_KEYS)}")

    def renames(key: str, table: str) -> dict[str, str]:
        value = raw.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            raise ContractError(f"{path}: {key} must map column names to column names")
        allowed = set(SCHEMAS[table].names)
        for source, target in value.items():
            if target not in allowed and not (table == IMPRESSIONS and target.startswith(EXTRA_FEATURE_PREFIX)):
                extra = f" and does not start with {EXTRA_FEATURE_PREFIX}" if table == IMPRESSIONS else ""
                raise ContractError(f"{path}: {key}: {source} -> {target}: {target!r} is not a column of the {table} "
                                    f"contract{extra}")
        return dict(value)

    columns = renames("columns", IMPRESSIONS)
    features_raw = raw.get("features") or {}
    if isinstance(features_raw, list):
        features_raw = {name: None for name in features_raw}
    if not isinstance(features_raw, dict) or not all(isinstance(k, str) for k in features_raw):
        raise ContractError(f"{path}: features must be a list of column names or a {{name: type}} mapping")
    features: dict[str, str | None] = {}
    for name, kind in features_raw.items():
        if kind is not None and str(kind).lower() not in FEATURE_TYPES:
            raise ContractError(f"{path}: features: {name}: unknown type {kind!r} (int, float or string)")
        if name in columns:
            raise ContractError(f"{path}: {name} is both renamed under columns and listed under features")
        features[name] = None if kind is None else FEATURE_TYPES[str(kind).lower()]
    ts_unit = raw.get("ts_unit")
    if ts_unit is not None and ts_unit not in TS_UNITS:
        raise ContractError(f"{path}: ts_unit must be one of {', '.join(TS_UNITS)}, got {ts_unit!r}")
    ts_format = raw.get("ts_format")
    if ts_format is not None and (not isinstance(ts_format, str) or "%" not in ts_format):
        raise ContractError(f"{path}: ts_format must be a strptime format such as '%Y-%m-%d %H:%M:%S'")
    if ts_format and ts_unit:
        raise ContractError(f"{path}: ts_format (text times) and ts_unit (epoch numbers) exclude each other")
    zone = raw.get("ts_timezone")
    if zone is not None:
        try:
            ZoneInfo(str(zone))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ContractError(f"{path}: ts_timezone {zone!r} is not a known time zone") from exc
        zone = str(zone)
    return Mapping(columns, renames("catalog_columns", CATALOG), features, ts_format, ts_unit, zone,
                   _set_rules(path, raw, IMPRESSIONS), _set_rules(path, raw, CATALOG))


def _set_rules(path, raw: dict, table: str) -> tuple:
    """The `set:` / `catalog_set:` section: contract columns as constants or derived values."""
    section_key = SET_KEYS[table]
    section = raw.get(section_key) or {}
    if not isinstance(section, dict):
        raise ContractError(f"{path}: {section_key} must map contract columns to a constant or a rule")
    rules = []
    for target, spec in section.items():
        key = f"{section_key}.{target}"
        if target not in SCHEMAS[table].names:
            raise ContractError(f"{path}: {key}: {target!r} is not a column of the {table} contract "
                                f"({', '.join(SCHEMAS[table].names)})")
        rule = parse_rule(path, key, target, spec)
        kind = KINDS[table][target]
        if rule.op in TEXT_RULES and kind != "string":
            raise ContractError(f"{path}: {key}: {rule.op} makes text, but {target} is a {kind} column")
        if rule.op == "const":
            value = rule.args["value"]
            if isinstance(value, bool) and kind == "flag":  # YAML's true/false for a 0/1 column
                rule = Rule(target, "const", {"value": int(value)}, key)
            _check_constant(path, key, target, kind, rule.args["value"], table)
        rules.append(rule)
    if sum(r.op == "session" for r in rules) > 1:
        raise ContractError(f"{path}: {section_key}: at most one session rule")
    if table == CATALOG and any(r.op == "session" for r in rules):
        raise ContractError(f"{path}: {section_key}: session rules cut impressions into sessions; "
                            f"the catalog has none")
    return tuple(ordered(path, rules))


def _check_constant(path, key: str, target: str, kind: str, value, table: str) -> None:
    if value is None:
        if target not in NULLABLE[table]:
            raise ContractError(f"{path}: {key}: null, but {target} may not be null")
        return
    if kind == "ts":
        raise ContractError(f"{path}: {key}: a constant time would put every row at one instant; "
                            f"map a column to ts instead")
    _, problems = convert_column(pa.array([str(value)]), target, kind, Mapping())
    problems = [(r, m) for r, m in problems if not r.startswith("ts")]
    if isinstance(value, bool) or any(mask.any() for _, mask in problems):
        reason = "; ".join(r for r, m in problems if m.any()) or "true/false fits only a 0/1 column"
        raise ContractError(f"{path}: {key}: constant {value!r} does not fit ({reason})")


# ---------------------------------------------------------------- reading


@dataclass
class Source:
    path: str
    fmt: str               # "csv" or "parquet"
    schema: pa.Schema      # as read (CSV: every column as text)

    @property
    def name(self) -> str:
        return Path(self.path).name


def _one_line(exc, limit: int = 300) -> str:
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
    text = _one_line(exc)
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


def _batches(source: Source, block_bytes: int, batch_rows: int,
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


def _chunks(source: Source, rows: int, block_bytes: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last one shorter), whatever the reader's own batch sizes,
    so the output does not depend on the input's row groups or CSV blocks."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in _batches(source, block_bytes, rows):
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


# ---------------------------------------------------------------- planning


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_number(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_boolean(t))


def _type_problem(kind: str, t: pa.DataType, mapping: Mapping) -> str | None:
    """Why a column of Arrow type `t` can never be read as `kind`, or None when it can."""
    t = _value_type(t)
    if pa.types.is_null(t):
        return None
    if kind == "string":
        ok = _is_text(t) or pa.types.is_integer(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
    elif kind in ("int", "flag", "float"):
        ok = _is_text(t) or _is_number(t)
    elif kind == "text":
        ok = not (pa.types.is_nested(t) or pa.types.is_dictionary(t))
    elif kind == "ts":
        if mapping.ts_unit:
            return None if _is_text(t) or _is_number(t) else "is not a number, but the mapping sets ts_unit"
        if mapping.ts_format:
            return None if _is_text(t) else "is not text, but the mapping sets ts_format"
        if _is_number(t):
            return "holds numbers: set ts_unit (s, ms, us or ns) in the mapping"
        ok = _is_text(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
    else:
        raise ValueError(kind)
    return None if ok else f"cannot be read as {kind}"


def _feature_kind(t: pa.DataType) -> str | None:
    """The feature kind a Parquet column's type holds (None: all null, no say)."""
    t = _value_type(t)
    if pa.types.is_null(t):
        return None
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    return "text"


def _widest(kinds) -> str | None:
    order = ("int", "float", "text")
    present = [k for k in kinds if k is not None]
    return max(present, key=order.index) if present else None


@dataclass
class FilePlan:
    source: Source
    take: dict[str, str]          # output column -> the file's column
    dropped: list[str]
    filled: list[str]             # nullable contract columns the file lacks
    rules: tuple = ()             # set rules, in evaluation order
    sessions: np.ndarray | None = None  # the session rule's id per data row (ingest's first pass)


@dataclass
class TableSpec:
    table: str
    kinds: dict[str, str]         # output column -> kind
    schema: pa.Schema


def plan_file(source: Source, table: str, mapping: Mapping) -> FilePlan:
    renames = mapping.renames(table)
    contract = SCHEMAS[table].names
    take: dict[str, str] = {}
    dropped: list[str] = []
    for column in source.schema.names:
        target = renames.get(column, column)
        keep = target in contract or (table == IMPRESSIONS and target.startswith(EXTRA_FEATURE_PREFIX))
        if not keep:
            dropped.append(column)
            continue
        if target in take:
            raise ContractError(f"{source.path}: columns {take[target]!r} and {column!r} both map to {target!r}")
        take[target] = column
    rules = mapping.rules(table)
    set_targets = {r.target for r in rules}
    filled = [c for c in contract if c not in take and c not in set_targets]
    return FilePlan(source, take, dropped, filled, rules)


def missing_columns(plan: FilePlan, table: str, mapping: Mapping) -> str | None:
    """What the file lacks of the contract's required columns, all at once, with the way to give them."""
    sources_of = {target: their for their, target in mapping.renames(table).items()}
    missing = [c for c in SCHEMAS[table].names
               if c in plan.filled and c not in NULLABLE[table]]
    if not missing:
        return None
    named = ", ".join(f"{c!r} (the mapping renames {sources_of[c]!r} to it)" if c in sources_of else repr(c)
                      for c in missing)
    return (f"{plan.source.path}: required {table} column(s) missing: {named}; map a column to each under "
            f"{'columns' if table == IMPRESSIONS else 'catalog_columns'}: or give it under {SET_KEYS[table]}:")


def check_references(plan: FilePlan, table: str) -> None:
    """Every column a set rule reads is in the output or in the file."""
    available = set(plan.take) | set(plan.source.schema.names)
    for rule in plan.rules:
        available.add(rule.target)
        for name in rule.references():
            if name not in available or (name == rule.target and name not in plan.take):
                raise ContractError(f"{plan.source.path}: {rule.key}: reads {name!r}, which is neither a "
                                    f"{table} column of the output nor a column of this file")


def _infer_text_kind(column: pa.Array) -> tuple[bool, bool]:
    """Whether every value of a text column reads as an integer, and as a number."""
    trimmed = pc.utf8_trim_whitespace(column)

    def every(pattern: str) -> bool:  # nulls say nothing about the type
        return pc.all(pc.fill_null(pc.match_substring_regex(trimmed, pattern), True)).as_py() is not False

    is_int = every(STRICT_INT_RE)
    return is_int, is_int or every(FLOAT_RE)


def plan_tables(sources: list[Source], catalog: Source, mapping: Mapping, section: dict,
                log: Log) -> tuple[list[FilePlan], FilePlan, TableSpec, TableSpec]:
    plans = [plan_file(s, IMPRESSIONS, mapping) for s in sources]
    cat_plan = plan_file(catalog, CATALOG, mapping)
    missing = [m for m in [missing_columns(p, IMPRESSIONS, mapping) for p in plans]
               + [missing_columns(cat_plan, CATALOG, mapping)] if m]
    if missing:
        raise ContractError("; ".join(missing))
    for plan in plans:
        check_references(plan, IMPRESSIONS)
    check_references(cat_plan, CATALOG)
    for plan, table in [(p, IMPRESSIONS) for p in plans] + [(cat_plan, CATALOG)]:
        for target, column in plan.take.items():
            kind = KINDS[table].get(target) or mapping.declared_kind(target) or "text"
            problem = _type_problem(kind, plan.source.schema.field(column).type, mapping)
            if problem:
                raise ContractError(f"{plan.source.path}: column {column!r} ({target}) is "
                                    f"{plan.source.schema.field(column).type} and {problem}")

    # Feature columns: first appearance order; one type across all files so every part of a day agrees.
    features: list[str] = []
    for plan in plans:
        features += [t for t in plan.take if t.startswith(EXTRA_FEATURE_PREFIX) and t not in features]
    kinds: dict[str, str] = {}
    to_scan: dict[str, list[str]] = {}  # CSV path -> its feature columns whose type is not declared
    seen: dict[str, list[str | None]] = {name: [] for name in features}
    for name in features:
        declared = mapping.declared_kind(name)
        if declared:
            kinds[name] = declared
            continue
        for plan in plans:
            column = plan.take.get(name)
            if column is None:
                continue
            if plan.source.fmt == "parquet":
                seen[name].append(_feature_kind(plan.source.schema.field(column).type))
            else:
                to_scan.setdefault(plan.source.path, []).append(column)
    if to_scan:
        # CSV has no types: read the undeclared feature columns once to find the narrowest that fits.
        log(f"ingest: reading the feature columns of {len(to_scan)} CSV file(s) once to infer their types "
            f"(declare them under features: in the mapping to skip this)")
        for plan in plans:
            columns = to_scan.get(plan.source.path)
            if not columns:
                continue
            flags = {c: [True, True] for c in columns}
            for batch in _batches(plan.source, section["csv_block_bytes"], section["chunk_rows"], columns):
                for c in columns:
                    if flags[c][1]:
                        is_int, is_num = _infer_text_kind(batch.column(c))
                        flags[c][0] &= is_int
                        flags[c][1] &= is_num
            by_column = {column: target for target, column in plan.take.items()}
            for c, (is_int, is_num) in flags.items():
                seen[by_column[c]].append("int" if is_int else "float" if is_num else "text")
    for name in features:
        if name not in kinds:
            kinds[name] = _widest(seen[name]) or "text"
    spec = TableSpec(IMPRESSIONS, {**KINDS[IMPRESSIONS], **kinds},
                     pa.schema(list(IMPRESSION_SCHEMA) + [pa.field(n, FEATURE_ARROW[kinds[n]]) for n in features]))
    cat_spec = TableSpec(CATALOG, dict(KINDS[CATALOG]), CATALOG_SCHEMA)
    return plans, cat_plan, spec, cat_spec


# ---------------------------------------------------------------- casting


Problems = list[tuple[str, np.ndarray]]


def _mask(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _plain(column) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _cast_rowwise(arr: pa.Array, to: pa.DataType, safe: bool = True) -> tuple[pa.Array, np.ndarray]:
    """Cast, and where the whole cast fails, find the failing values by halving (cheap when few fail)."""
    bad = np.zeros(len(arr), dtype=bool)
    try:
        return pc.cast(arr, to, safe=safe), bad
    except pa.ArrowInvalid:
        pass
    pieces: list[pa.Array] = []

    def cast_range(lo: int, hi: int) -> None:
        try:
            pieces.append(pc.cast(arr.slice(lo, hi - lo), to, safe=safe))
            return
        except pa.ArrowInvalid:
            if hi - lo == 1:
                bad[lo] = True
                pieces.append(pa.nulls(1, to))
                return
        mid = (lo + hi) // 2
        cast_range(lo, mid)
        cast_range(mid, hi)

    cast_range(0, len(arr))
    return pa.concat_arrays(pieces), bad


def _null_where(arr: pa.Array, bad: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(bad), pa.scalar(None, arr.type), arr) if bad.any() else arr


def _parse_numbers(text: pa.Array, pattern: str, to: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Text to numbers: values not matching `pattern` are bad; returns (values, bad)."""
    trimmed = pc.utf8_trim_whitespace(text)
    ok = pc.match_substring_regex(trimmed, pattern)
    bad = _mask(pc.and_(pc.is_valid(trimmed), pc.invert(ok)))
    if pa.types.is_integer(to):
        trimmed = pc.replace_substring_regex(trimmed, r"^\+|\.0*$", "")
    values, cast_bad = _cast_rowwise(pc.if_else(ok, trimmed, pa.scalar(None, pa.string())), to)
    return values, bad | cast_bad


def _to_int(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.int64()), np.zeros(len(arr), dtype=bool)
    if _is_text(t):
        return _parse_numbers(arr, INT_RE, pa.int64())
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return _cast_rowwise(arr, pa.int64())
    floats = pc.cast(arr, pa.float64(), safe=False)
    ok = pc.and_(pc.and_(pc.is_finite(floats), pc.equal(pc.floor(floats), floats)),
                 pc.less(pc.abs(floats), 2.0 ** 63))
    bad = _mask(pc.and_(pc.is_valid(floats), pc.invert(ok)))
    values, cast_bad = _cast_rowwise(pc.if_else(ok, floats, pa.scalar(None, pa.float64())), pa.int64())
    return values, bad | cast_bad


def _to_float(arr: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(values, not a number, not finite)."""
    t = arr.type
    if pa.types.is_null(t):
        nothing = np.zeros(len(arr), dtype=bool)
        return pa.nulls(len(arr), pa.float64()), nothing, nothing
    if _is_text(t):
        values, bad = _parse_numbers(arr, FLOAT_RE, pa.float64())
    else:
        values, bad = _cast_rowwise(arr, pa.float64(), safe=not pa.types.is_decimal(t))
    infinite = _mask(pc.is_inf(values))
    return _null_where(values, infinite), bad, infinite


def _to_string(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    if _is_text(arr.type):
        return arr, np.zeros(len(arr), dtype=bool)
    return _cast_rowwise(arr, pa.string())


def _localize(naive: pa.Array, zone: str | None) -> tuple[pa.Array, np.ndarray]:
    """Naive wall-clock times in `zone` (default UTC) as UTC; times the zone skips or repeats are bad."""
    naive = pc.cast(naive, pa.timestamp("us"))
    if zone is None or zone.upper() == "UTC":
        return pc.cast(naive, TS_TYPE), np.zeros(len(naive), dtype=bool)
    early = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="earliest")
    late = pc.assume_timezone(naive, zone, ambiguous="latest", nonexistent="latest")
    # A DST change makes a wall-clock time mean two instants or none; guessing would shift the row.
    bad = _mask(pc.not_equal(early, late))
    return _null_where(pc.cast(early, TS_TYPE), bad), bad


def _epoch_to_ts(arr: pa.Array, unit: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Epoch numbers (ints, floats or their text) in `unit` to UTC microseconds: (ts, not a number, out of range)."""
    factor = TS_UNITS[unit]
    if _is_text(arr.type):
        ints, not_int = _parse_numbers(arr, EPOCH_INT_RE, pa.int64())
        floats, not_float = _parse_numbers(arr, FLOAT_RE, pa.float64())
        is_float = not_int & ~not_float
        bad = not_int & not_float
    elif pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        ints, bad = _cast_rowwise(arr, pa.int64())
        floats, is_float = pa.nulls(len(arr), pa.float64()), np.zeros(len(arr), dtype=bool)
    else:
        floats, bad = _cast_rowwise(arr, pa.float64(), safe=False)
        ints, is_float = pa.nulls(len(arr), pa.int64()), pc.is_valid(floats).to_numpy(zero_copy_only=False)
    int_values = pc.fill_null(ints, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    float_values = pc.fill_null(floats, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    valid = ~bad & _mask(pc.or_(pc.is_valid(ints), pc.is_valid(floats)))
    us = np.zeros(len(arr), dtype=np.int64)
    in_range = np.zeros(len(arr), dtype=bool)
    whole = valid & ~is_float
    if factor is None:  # ns: floor to microseconds
        in_range[whole] = True
        us[whole] = int_values[whole] // 1000
    else:
        lo, hi = -((-MIN_US) // factor), MAX_US // factor
        in_range[whole] = (int_values[whole] >= lo) & (int_values[whole] < hi)
        ok = whole & in_range
        us[ok] = int_values[ok] * factor
    scaled = float_values * (factor if factor is not None else 1e-3)
    ok_float = valid & is_float & np.isfinite(scaled) & (scaled >= MIN_US) & (scaled < MAX_US)
    us[ok_float] = np.floor(scaled[ok_float]).astype(np.int64)
    in_range |= ok_float
    # Out-of-range values are left to the year check, which names them.
    out = pa.array(us, type=pa.int64(), mask=~(valid & in_range)).cast(TS_TYPE)
    out_of_range = valid & ~in_range
    return out, bad, out_of_range


def _to_ts(arr: pa.Array, mapping: Mapping) -> tuple[pa.Array, Problems]:
    t = arr.type
    n = len(arr)
    problems: Problems = []
    zone = mapping.ts_timezone
    if pa.types.is_null(t):
        out = pa.nulls(n, TS_TYPE)
    elif mapping.ts_unit:
        out, bad, out_of_range = _epoch_to_ts(arr, mapping.ts_unit)
        problems.append((f"ts: not a number of {mapping.ts_unit} since 1970", bad))
        problems.append(("ts: outside years 1000-9999", out_of_range))
    elif _is_text(t) and mapping.ts_format:
        text = pc.utf8_trim_whitespace(arr)
        aware = "%z" in mapping.ts_format or "%Z" in mapping.ts_format
        parsed = pd.to_datetime(text.to_pandas(), format=mapping.ts_format, errors="coerce", utc=aware)
        values = pa.Array.from_pandas(parsed)
        bad = _mask(pc.and_(pc.is_valid(text), pc.is_null(values)))
        problems.append((f"ts: does not match ts_format {mapping.ts_format!r}", bad))
        if aware:
            out = pc.cast(values, TS_TYPE, safe=False)
        else:
            out, bad_local = _localize(pc.cast(values, pa.timestamp("us"), safe=False), zone)
            problems.append((f"ts: local time skipped or repeated by a DST change in {zone}", bad_local))
    elif _is_text(t):
        text = pc.utf8_trim_whitespace(arr)
        ok = pc.match_substring_regex(text, ISO_RE)
        bad = _mask(pc.and_(pc.is_valid(text), pc.invert(ok)))
        text = pc.replace_substring_regex(text, r"(\.\d{6})\d+", r"\1")  # the contract keeps microseconds
        has_offset = pc.fill_null(pc.match_substring_regex(text, OFFSET_RE), False)
        none = pa.scalar(None, pa.string())
        aware, bad_aware = _cast_rowwise(pc.if_else(pc.and_(ok, has_offset), text, none), TS_TYPE)
        naive, bad_naive = _cast_rowwise(pc.if_else(pc.and_(ok, pc.invert(has_offset)), text, none),
                                         pa.timestamp("us"))
        local, bad_local = _localize(naive, zone)
        out = pc.if_else(has_offset, aware, local)
        problems.append(("ts: not an ISO 8601 time", bad | bad_aware | bad_naive))
        problems.append((f"ts: local time skipped or repeated by a DST change in {zone}", bad_local))
    elif pa.types.is_timestamp(t) and t.tz is not None:
        out, bad = _cast_rowwise(arr, pa.timestamp("us", tz=t.tz), safe=t.unit != "ns")
        out = pc.cast(out, TS_TYPE)
        problems.append(("ts: outside years 1000-9999", bad))
    else:  # naive timestamps and dates: wall-clock times in ts_timezone
        naive, bad = _cast_rowwise(arr, pa.timestamp("us"), safe=not pa.types.is_timestamp(t) or t.unit != "ns")
        out, bad_local = _localize(naive, zone)
        problems.append(("ts: outside years 1000-9999", bad))
        problems.append((f"ts: local time skipped or repeated by a DST change in {zone}", bad_local))
    us = pc.cast(out, pa.int64())
    problems.append(("ts: missing", _mask(pc.is_null(arr))))
    problems.append(("ts: outside years 1000-9999",
                     _mask(pc.or_(pc.less(us, MIN_US), pc.greater_equal(us, MAX_US)))))
    return out, problems


def convert_column(column, name: str, kind: str, mapping: Mapping) -> tuple[pa.Array, Problems]:
    arr = _plain(column)
    if kind == "ts":
        return _to_ts(arr, mapping)
    if kind in ("string", "text"):
        out, bad = _to_string(arr)
        return out, [(f"{name}: cannot be read as text", bad)]
    if kind == "int":
        out, bad = _to_int(arr)
        return out, [(f"{name}: not an integer", bad)]
    if kind == "flag":
        out, bad = _to_int(arr)
        bad = bad | _mask(pc.and_(pc.is_valid(out), pc.invert(pc.is_in(out, pa.array([0, 1], pa.int64())))))
        return _null_where(out, bad), [(f"{name}: not 0 or 1", bad)]
    if kind == "float":
        out, bad, infinite = _to_float(arr)
        return out, [(f"{name}: not a number", bad), (f"{name}: not a finite number", infinite)]
    raise ValueError(kind)


def _as_text(arr: pa.Array) -> pa.Array:
    arr = _plain(arr)
    if _is_text(arr.type):
        return arr
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


@dataclass
class Converted:
    good: pa.Table
    quarantine: pa.Table | None
    reasons: Counter


def _label(spec: TableSpec, name: str) -> str:
    # Catalog reasons say so, as they are counted beside the impressions' own.
    return name if spec.table == IMPRESSIONS else f"catalog.{name}"


def _rule_values(rule: Rule, columns: dict, chunk: pa.Table, plan: FilePlan, first_row: int) -> pa.Array:
    """The raw values a set rule gives the chunk's rows (cast to the column's type by the caller)."""
    n = chunk.num_rows

    def ref(name: str):  # the output's column first (renamed, cast, set), else the file's own
        return columns[name] if name in columns else chunk.column(name)

    if rule.op == "const":
        value = rule.args["value"]
        return pa.nulls(n, pa.string()) if value is None else pa.array([str(value)] * n, pa.string())
    if rule.op == "copy":
        return ref(rule.args["column"])
    if rule.op == "hash":
        return hash_ids([ref(c) for c in rule.args["columns"]])
    if rule.op == "row":
        return row_ids(rule.args["prefix"] or plan.source.name, first_row, n)
    if rule.op == "template":
        return fill_template(rule.args["template"], rule.args["fields"], [ref(c) for c in rule.args["fields"]])
    if rule.op == "join":
        return join_values([ref(c) for c in rule.args["columns"]], rule.args["sep"])
    if rule.op == "session":
        if plan.sessions is None:
            raise RuntimeError("session ids are computed before the rows are converted")
        return pa.array(plan.sessions[first_row:first_row + n], pa.string())
    raise ValueError(rule.op)


def _empty(arr: pa.Array) -> pa.Array:
    """Where a column holds nothing: null, or blank text."""
    if pa.types.is_string(arr.type):
        return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""), True)
    return pc.is_null(arr)


def apply_rules(chunk: pa.Table, plan: FilePlan, spec: TableSpec, mapping: Mapping, first_row: int,
                columns: dict, problems: Problems, until: str | None = None) -> None:
    """Give the set columns their values; a column the file has too is filled only where empty.
    `until`: stop before that rule (the first pass computes what the session rule reads)."""
    for rule in plan.rules:
        if rule.op == until:
            return
        values = _rule_values(rule, columns, chunk, plan, first_row)
        try:
            out, found = convert_column(values, _label(spec, rule.target), spec.kinds[rule.target], mapping)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:  # e.g. a copy of a nested column
            raise ContractError(f"{plan.source.path}: {rule.key}: its values ({values.type}) cannot be read as "
                                f"{spec.kinds[rule.target]} ({_one_line(exc)})") from exc
        if rule.target in columns:
            empty = _empty(columns[rule.target])
            out = pc.if_else(empty, out, columns[rule.target])
            found = [(reason, mask & _mask(empty)) for reason, mask in found]
        columns[rule.target] = out
        problems += [(reason, mask) for reason, mask in found if mask.any()]


def convert_columns(chunk: pa.Table, plan: FilePlan, spec: TableSpec, mapping: Mapping, first_row: int,
                    until: str | None = None) -> tuple[dict, Problems]:
    """The chunk's output columns (every row, bad ones too) and the problems found per row."""
    columns: dict[str, pa.Array] = {}
    problems: Problems = []
    for name, column in plan.take.items():
        out, found = convert_column(chunk.column(column), _label(spec, name), spec.kinds[name], mapping)
        columns[name] = out
        problems += [(reason, mask) for reason, mask in found if mask.any()]
    apply_rules(chunk, plan, spec, mapping, first_row, columns, problems, until)
    return columns, problems


def convert_chunk(chunk: pa.Table, plan: FilePlan, spec: TableSpec, mapping: Mapping,
                  first_row: int) -> Converted:
    n = chunk.num_rows
    columns, problems = convert_columns(chunk, plan, spec, mapping, first_row)
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in spec.schema]
    table = pa.Table.from_arrays(arrays, schema=spec.schema)
    if not problems:
        return Converted(table, None, Counter())
    bad = np.logical_or.reduce([mask for _, mask in problems])
    rows = np.flatnonzero(bad)
    why: list[list[str]] = [[] for _ in rows]
    reasons: Counter = Counter()
    for reason, mask in problems:
        hits = np.flatnonzero(mask[rows])
        reasons[reason] += int(mask.sum())
        for k in hits:
            if reason not in why[k]:
                why[k].append(reason)
    indices = pa.array(rows)
    quarantine = {}
    for name in chunk.column_names:
        label = f"input:{name}" if name in QUARANTINE_EXTRA else name
        quarantine[label] = _as_text(chunk.column(name).take(indices))
    quarantine["reason"] = pa.array(["; ".join(r) for r in why], pa.string())
    quarantine["source_file"] = pa.array([plan.source.path] * len(rows), pa.string())
    quarantine["source_row"] = pa.array(rows + first_row + 1, pa.int64())
    return Converted(table.filter(pa.array(~bad)), pa.table(quarantine), reasons)


# ---------------------------------------------------------------- writing


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


def _remove_dead_staging(out: Path) -> None:
    """Staging left behind by an ingest that was killed (its process is gone)."""
    for folder in out.glob(".ingest-staging-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- the stage


def assign_sessions(plans: list[FilePlan], spec: TableSpec, mapping: Mapping, section: dict, log: Log) -> None:
    """The session rule's id for every data row of every file, before the rows are written.

    A session is a user's rows in time order, so it spans chunks and files: a first pass reads every
    file, computes the columns the rule reads (user and ts, after the rules before it), and cuts
    sessions over all rows at once. Memory: one user and one time per row."""
    rule = next((r for r in mapping.set_rules if r.op == "session"), None)
    if rule is None:
        return
    log(f"ingest: {rule.key}: a first pass over the impressions to cut each {rule.args['user']}'s rows "
        f"into sessions")
    users, times, valid, counts = [], [], [], []
    for plan in plans:
        rows = 0
        for chunk in _chunks(plan.source, section["chunk_rows"], section["csv_block_bytes"]):
            columns, problems = convert_columns(chunk, plan, spec, mapping, rows, until="session")
            user = columns[rule.args["user"]] if rule.args["user"] in columns else chunk.column(rule.args["user"])
            ts = columns["ts"]
            ok = _mask(pc.and_(pc.is_valid(user), pc.is_valid(ts)))
            for _, mask in problems:
                ok &= ~mask
            users.append(np.asarray(text_of(user).to_pylist(), dtype=object))
            times.append(pc.fill_null(pc.cast(ts, pa.int64()), 0).to_numpy(zero_copy_only=False))
            valid.append(ok)
            rows += chunk.num_rows
        counts.append(rows)
    if not counts or not sum(counts):
        for plan in plans:
            plan.sessions = np.array([], dtype=object)
        return
    all_users = np.concatenate(users)
    all_users = np.where(pd.isna(all_users), "", all_users).astype(str)
    ids = session_ids(all_users, np.concatenate(times), np.concatenate(valid), rule.args["gap_us"])
    for plan, start, count in zip(plans, np.cumsum([0] + counts[:-1]), counts):
        plan.sessions = ids[start:start + count]
    log(f"ingest: {rule.key}: {len(set(ids[np.concatenate(valid)]))} sessions "
        f"(gap {rule.args['gap_us'] / 60e6:g} minutes)")


def _stream(plan: FilePlan, spec: TableSpec, mapping: Mapping, section: dict, quarantine: QuarantineWriter,
            sink: Callable[[pa.Table], None]) -> tuple[int, Counter]:
    rows_read = 0
    reasons: Counter = Counter()
    for chunk in _chunks(plan.source, section["chunk_rows"], section["csv_block_bytes"]):
        converted = convert_chunk(chunk, plan, spec, mapping, rows_read)
        rows_read += chunk.num_rows
        reasons.update(converted.reasons)
        if converted.quarantine is not None:
            quarantine.write(converted.quarantine)
        if converted.good.num_rows:
            sink(converted.good)
    quarantine.close()
    return rows_read, reasons


def _some(names: list[str], shown: int = 8) -> str:
    listed = ", ".join(n or "''" for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def run(impressions: list[str] | str, catalog: str, out: str | Path, params: dict | None = None,
        mapping: Mapping | str | Path | None = None, log: Log | None = None) -> dict:
    """Ingest impressions and a catalog into `out`; the days they touch are replaced whole.

    Raises ContractError, with nothing written, when an input cannot be read."""
    log = log or (lambda line: None)
    section = ingest_params(params)
    mapping = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    files = expand_inputs([impressions] if isinstance(impressions, str) else list(impressions))
    sources = [open_source(p, section["csv_block_bytes"]) for p in files]
    cat_source = open_source(str(catalog), section["csv_block_bytes"])
    plans, cat_plan, spec, cat_spec = plan_tables(sources, cat_source, mapping, section, log)
    assign_sessions(plans, spec, mapping, section, log)
    for plan in plans + [cat_plan]:
        read_by_rules = {name for rule in plan.rules for name in rule.references()}
        dropped = [c for c in plan.dropped if c not in read_by_rules]
        if dropped:
            log(f"ingest: {plan.source.path}: dropping column(s) {_some(dropped)} "
                f"(not in the contract, not f_*, not listed under features)")
        if plan.filled:
            log(f"ingest: {plan.source.path}: no column for {', '.join(plan.filled)}; filled with nulls")
    for table, table_sources in ((IMPRESSIONS, sources), (CATALOG, [cat_source])):
        unused = [c for c in mapping.renames(table) if not any(c in s.schema.names for s in table_sources)]
        if unused:
            log(f"ingest: the mapping names {table} column(s) {', '.join(unused)}, which no input has")
    for name in spec.schema.names[len(IMPRESSION_SCHEMA):]:
        lacking = [p.source.path for p in plans if name not in p.take]
        if lacking:
            log(f"ingest: feature {name} is absent from {', '.join(lacking)}; filled with nulls there")

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out)
    staging = out / f".ingest-staging-{os.getpid()}"
    q_names = quarantine_names([p.source.path for p in plans] + [cat_plan.source.path])
    summary: dict = {"files": [], "rows_read": 0, "rows_written": {}, "rows_quarantined": 0,
                     "quarantine_reasons": {}, "days": [], "parts": {},
                     "features": {n: str(spec.schema.field(n).type)
                                  for n in spec.schema.names[len(IMPRESSION_SCHEMA):]}}
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed run that had this pid
        staging.mkdir()
        reasons_all: Counter = Counter()
        quarantines: list[tuple[QuarantineWriter, str]] = []
        # The catalog first: it is the smaller file, so a broken one fails the run early.
        cat_file = staging / "catalog.parquet"
        cat_writer = pq.ParquetWriter(cat_file, cat_spec.schema)
        cat_quarantine = QuarantineWriter(staging / "quarantine" / q_names[cat_plan.source.path])
        cat_rows, cat_reasons = _stream(cat_plan, cat_spec, mapping, section, cat_quarantine, cat_writer.write_table)
        cat_writer.close()
        quarantines.append((cat_quarantine, q_names[cat_plan.source.path]))
        reasons_all.update(cat_reasons)
        summary["catalog"] = {"path": cat_plan.source.path, "rows_read": cat_rows,
                              "rows_written": cat_rows - cat_quarantine.rows,
                              "rows_quarantined": cat_quarantine.rows, "dropped_columns": cat_plan.dropped}
        log(f"ingest: {cat_plan.source.path}: {cat_rows} catalog rows read, {cat_quarantine.rows} quarantined")

        days = DayParts(staging / "impressions", section["chunk_rows"])
        for plan in plans:
            writer = QuarantineWriter(staging / "quarantine" / q_names[plan.source.path])
            rows, reasons = _stream(plan, spec, mapping, section, writer, days.add)
            quarantines.append((writer, q_names[plan.source.path]))
            reasons_all.update(reasons)
            summary["files"].append({"path": plan.source.path, "rows_read": rows,
                                     "rows_quarantined": writer.rows, "dropped_columns": plan.dropped})
            summary["rows_read"] += rows
            summary["rows_quarantined"] += writer.rows
            log(f"ingest: {plan.source.path}: {rows} rows read, {writer.rows} quarantined")
        days.close()

        # Every input was read in full: only now does anything in `out` change.
        for day in sorted(days.written):
            paths = DayPaths(out, day)
            with atomic_dir(paths.catalog_file.parent) as tmp:
                shutil.copyfile(cat_file, tmp / paths.catalog_file.name)
            replaced = paths.impressions_dir.exists()
            with atomic_dir(paths.impressions_dir) as tmp:
                for part in sorted((staging / "impressions" / f"dt={day}").iterdir()):
                    os.replace(part, tmp / part.name)
            summary["days"].append(day)
            summary["rows_written"][day] = days.written[day]
            summary["parts"][day] = days.parts[day]
            log(f"ingest: {day}: {days.written[day]} rows in {days.parts[day]} part(s) -> {paths.impressions_dir}"
                + (" (replaced the previous folder)" if replaced else ""))
        q_dir = out / "_quarantine" / "ingest"
        for writer, name in quarantines:
            if writer.rows:
                q_dir.mkdir(parents=True, exist_ok=True)
                os.replace(writer.path, q_dir / name)
            else:
                (q_dir / name).unlink(missing_ok=True)  # a stale list from an earlier run of this file
        summary["quarantine_files"] = [str(q_dir / name) for writer, name in quarantines if writer.rows]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)

    summary["quarantine_reasons"] = dict(sorted(reasons_all.items()))
    total_q = summary["rows_quarantined"] + summary["catalog"]["rows_quarantined"]
    log(f"ingest: {summary['rows_read']} impression rows read, {sum(summary['rows_written'].values())} written "
        f"over {len(summary['days'])} day(s), {summary['rows_quarantined']} quarantined; catalog "
        f"{summary['catalog']['rows_written']} items written, {summary['catalog']['rows_quarantined']} quarantined")
    if total_q:
        log(f"ingest: quarantined rows by reason (a row can have several) -> {out / '_quarantine' / 'ingest'}")
        for reason, count in summary["quarantine_reasons"].items():
            log(f"  {reason}: {count}")
    if summary["rows_read"] and not summary["days"]:
        log("ingest: WARNING every impression row was quarantined; no day was written (check the mapping)")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impressions", required=True, nargs="+", metavar="FILE_OR_GLOB",
                        help="impressions: .parquet/.pq or .csv/.csv.gz files, or glob patterns (quoted)")
    parser.add_argument("--catalog", required=True, help="the item catalog file (.parquet/.pq or .csv/.csv.gz)")
    parser.add_argument("--mapping", type=Path, default=None,
                        help="YAML: column renames, ts format/unit/time zone, extra feature columns")
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output root (default data/raw)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (ingest section)")


def main(args: argparse.Namespace) -> int:
    try:
        params = load_params(args.params)
        ingest_params(params)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"ingest: ERROR {args.params}: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        run(args.impressions, args.catalog, args.out, params, args.mapping, log=print)
    except ContractError as exc:
        print(f"ingest: ERROR {_one_line(exc, 1000)}", file=sys.stderr)
        return 2
    return 0
