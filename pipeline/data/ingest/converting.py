"""Converting a chunk of an input into output rows and quarantined rows, and the first pass for sessions.

`convert_chunk` casts the chunk's planned columns, gives the set columns their values (a column the
file has too is filled only where it is empty), and splits the rows into good ones, in the output
schema, and bad ones, every original column as text plus the reasons and the source row.
`assign_sessions` runs before that: a session spans chunks and files, so the session rule's ids
are cut in a first pass over every input.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.contract import ContractError
from pipeline.data.ingest.casting import Problems, as_text, convert_column, to_mask
from pipeline.data.ingest.columns import IMPRESSIONS, Log, Mapping
from pipeline.data.ingest.planning import FilePlan, TableSpec
from pipeline.data.ingest.reading import chunks, one_line
from pipeline.data.ingest.sets import Rule, fill_template, hash_ids, join_values, row_ids, session_ids, text_of

QUARANTINE_EXTRA = ("reason", "source_file", "source_row")


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
                                f"{spec.kinds[rule.target]} ({one_line(exc)})") from exc
        if rule.target in columns:
            empty = _empty(columns[rule.target])
            out = pc.if_else(empty, out, columns[rule.target])
            found = [(reason, mask & to_mask(empty)) for reason, mask in found]
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
        quarantine[label] = as_text(chunk.column(name).take(indices))
    quarantine["reason"] = pa.array(["; ".join(r) for r in why], pa.string())
    quarantine["source_file"] = pa.array([plan.source.path] * len(rows), pa.string())
    quarantine["source_row"] = pa.array(rows + first_row + 1, pa.int64())
    return Converted(table.filter(pa.array(~bad)), pa.table(quarantine), reasons)


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
        for chunk in chunks(plan.source, section["chunk_rows"], section["csv_block_bytes"]):
            columns, problems = convert_columns(chunk, plan, spec, mapping, rows, until="session")
            user = columns[rule.args["user"]] if rule.args["user"] in columns else chunk.column(rule.args["user"])
            ts = columns["ts"]
            ok = to_mask(pc.and_(pc.is_valid(user), pc.is_valid(ts)))
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
