"""Planning the output before any row is written: which column of each input becomes which output column.

For every input file a FilePlan says which of its columns fill which contract column, which are
dropped and which nullable columns are filled with nulls; every missing required column of every
input is named in one error, and a column whose type can never hold its contract kind fails here.
The TableSpec fixes each output column's kind and the Arrow schema; extra feature columns get one
type across all files (CSV ones are read once to infer it), so every part of a day agrees.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.contract import CATALOG_SCHEMA, EXTRA_FEATURE_PREFIX, IMPRESSION_SCHEMA, ContractError
from pipeline.data.ingest.casting import FLOAT_RE, STRICT_INT_RE, is_text
from pipeline.data.ingest.columns import CATALOG, IMPRESSIONS, KINDS, NULLABLE, SCHEMAS, SET_KEYS, Log, Mapping
from pipeline.data.ingest.reading import Source, batches

FEATURE_ARROW = {"int": pa.int64(), "float": pa.float64(), "text": pa.string()}


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_number(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_boolean(t))


def _type_problem(kind: str, t: pa.DataType, mapping: Mapping) -> str | None:
    """Why a column of Arrow type `t` can never be read as `kind`, or None when it can."""
    t = _value_type(t)
    if pa.types.is_null(t):
        return None
    if kind == "string":
        ok = is_text(t) or pa.types.is_integer(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
    elif kind in ("int", "flag", "float"):
        ok = is_text(t) or _is_number(t)
    elif kind == "text":
        ok = not (pa.types.is_nested(t) or pa.types.is_dictionary(t))
    elif kind == "ts":
        if mapping.ts_unit:
            return None if is_text(t) or _is_number(t) else "is not a number, but the mapping sets ts_unit"
        if mapping.ts_format:
            return None if is_text(t) else "is not text, but the mapping sets ts_format"
        if _is_number(t):
            return "holds numbers: set ts_unit (s, ms, us or ns) in the mapping"
        ok = is_text(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
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
            for batch in batches(plan.source, section["csv_block_bytes"], section["chunk_rows"], columns):
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
