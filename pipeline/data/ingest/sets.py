"""Columns an ingest mapping sets instead of reading them: constants and values derived from the row.

A log rarely carries every column the contract needs. The mapping's `set:` (impressions) and
`catalog_set:` (catalog) sections give a contract column a value per row:

    set:
      surface: recommend                          # a constant (text, a number, or null)
      purchased: 0
      user_id: {hash: [user_feature_0, user_feature_1]}   # an id from these columns' values
      request_id: {hash: [ts, user_id]}           # rows sharing a timestamp and a user: one request
      session_id: {session: {user: user_id, gap_minutes: 30}}  # a user's rows by ts, cut at 30 idle minutes
      event_id: {row: obd-random}                 # the row's place in its file: obd-random:1, ...
      query: {copy: search_text}                  # another column's values
    catalog_set:
      title: {template: "{brand} {name} ({item_id})"}   # text from the row's fields; nulls left out
      category: {join: [dept, aisle], sep: ">"}          # the non-empty values, joined (sep: " ")

A name inside a rule is a contract column of the output (after `columns:` renames, the cast, and
the other `set:` rules, in whatever order they are listed) or else a column of the input file. A
column that the input has too is only filled where the input leaves it empty.

This module holds the rules and their evaluation on one chunk; the session rule needs every row of a
user, so ingest computes it in a first pass over the inputs (converting.assign_sessions).
"""
from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.contract import ContractError

OPS = ("hash", "row", "session", "copy", "template", "join")
SESSION_KEYS = ("user", "gap_minutes")
UNIT_SEP = "\x1f"  # between the values hashed into an id: no text value holds it


@dataclass(frozen=True)
class Rule:
    target: str
    op: str                                   # "const" or one of OPS
    args: dict = field(default_factory=dict)  # op-specific, already checked
    key: str = ""                             # the mapping key, for messages: set.session_id

    def references(self) -> list[str]:
        """The columns the rule reads."""
        if self.op in ("hash", "join"):
            return list(self.args["columns"])
        if self.op == "copy":
            return [self.args["column"]]
        if self.op == "template":
            return list(self.args["fields"])
        if self.op == "session":
            return [self.args["user"], "ts"]
        return []


def _fail(path, key: str, message: str) -> ContractError:
    return ContractError(f"{path}: {key}: {message}")


def _names(path, key: str, value, op: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, key, f"{op} takes a list of column names, got {value!r}")
    return list(value)


def parse_rule(path, key: str, target: str, spec) -> Rule:
    """One `set:` entry: a scalar is a constant, a one-key mapping is a rule."""
    if spec is None or isinstance(spec, (str, int, float, bool)):
        return Rule(target, "const", {"value": spec}, key)
    if isinstance(spec, dict) and "join" in spec and set(spec) <= {"join", "sep"}:
        spec = {"join": {"columns": spec["join"], "sep": spec.get("sep", " ")}}  # {join: [...], sep: ">"}
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _fail(path, key, f"expected a constant or a one-key rule ({', '.join(OPS)}), got {spec!r}")
    [(op, value)] = spec.items()
    if op not in OPS:
        raise _fail(path, key, f"unknown rule {op!r}; expected one of {', '.join(OPS)}")
    if op == "hash":
        return Rule(target, op, {"columns": _names(path, key, value, op)}, key)
    if op == "copy":
        if not isinstance(value, str) or not value:
            raise _fail(path, key, f"copy takes one column name, got {value!r}")
        return Rule(target, op, {"column": value}, key)
    if op == "row":
        if value is not None and not isinstance(value, str):
            raise _fail(path, key, f"row takes a prefix (text) or null, got {value!r}")
        return Rule(target, op, {"prefix": value}, key)
    if op == "template":
        return Rule(target, op, {"template": value, "fields": _template_fields(path, key, value)}, key)
    if op == "join":
        return _join_rule(path, key, target, value)
    return _session_rule(path, key, target, value)


def _template_fields(path, key: str, template) -> list[str]:
    if not isinstance(template, str) or not template.strip():
        raise _fail(path, key, f"template takes text with {{column}} fields, got {template!r}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise _fail(path, key, f"template {template!r} is not valid ({exc})") from exc
    fields = [name for _, name, spec, conv in parsed if name is not None]
    if not fields:
        raise _fail(path, key, f"template {template!r} names no {{column}} field")
    bad = [name for _, name, spec, conv in parsed if name is not None and (not name or spec or conv)]
    if bad:
        raise _fail(path, key, "template fields are plain column names such as {title}, without format "
                               f"specs or positions (got {template!r})")
    return list(dict.fromkeys(fields))


def _join_rule(path, key: str, target: str, value) -> Rule:
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"columns", "sep"})
        if unknown:
            raise _fail(path, key, f"join: unknown key(s) {', '.join(unknown)}; expected columns, sep")
        columns, sep = value.get("columns"), value.get("sep", " ")
    else:
        columns, sep = value, " "
    if not isinstance(sep, str):
        raise _fail(path, key, f"join: sep must be text, got {sep!r}")
    return Rule(target, "join", {"columns": _names(path, key, columns, "join"), "sep": sep}, key)


def _session_rule(path, key: str, target: str, value) -> Rule:
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise _fail(path, key, f"session takes {{user, gap_minutes}}, got {value!r}")
    unknown = sorted(set(value) - set(SESSION_KEYS))
    if unknown:
        raise _fail(path, key, f"session: unknown key(s) {', '.join(unknown)}; expected {', '.join(SESSION_KEYS)}")
    gap = value.get("gap_minutes", 30)
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not gap > 0:
        raise _fail(path, key, f"session: gap_minutes must be a number of minutes > 0, got {gap!r}")
    user = value.get("user", "user_id")
    if not isinstance(user, str) or not user:
        raise _fail(path, key, f"session: user must be a column name, got {user!r}")
    # Sessions are cut on the row's own time, the contract's ts after the cast.
    return Rule(target, "session", {"user": user, "gap_us": int(gap * 60_000_000)}, key)


def ordered(path, rules: list[Rule]) -> list[Rule]:
    """The rules in an order where each comes after the rules whose columns it reads."""
    by_target = {r.target: r for r in rules}
    done: list[Rule] = []
    state: dict[str, str] = {}

    def visit(rule: Rule, chain: list[str]) -> None:
        if state.get(rule.target) == "done":
            return
        if state.get(rule.target) == "visiting":
            cycle = " -> ".join(chain + [rule.target])
            raise _fail(path, rule.key, f"the set rules read each other in a circle ({cycle})")
        state[rule.target] = "visiting"
        for name in rule.references():
            if name in by_target and name != rule.target:
                visit(by_target[name], chain + [rule.target])
        state[rule.target] = "done"
        done.append(rule)

    for rule in rules:
        visit(rule, [])
    return done


# ---------------------------------------------------------------- evaluation on a chunk


def text_of(column) -> pa.Array:
    """Any column as text (timestamps as ISO text), for ids and templates."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type):
        return arr
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


def hash_ids(columns: list[pa.Array]) -> pa.Array:
    """A 16-hex-digit id per row from the rows' values: the same values give the same id in every run."""
    values = zip(*[text_of(c).to_pylist() for c in columns])
    return pa.array([hashlib.sha1(UNIT_SEP.join("\x00" if v is None else v for v in row).encode()).hexdigest()[:16]
                     for row in values], pa.string())


def fill_template(template: str, fields: list[str], columns: list[pa.Array]) -> pa.Array:
    """The template per row; a null field leaves nothing, spaces are tidied, an empty result is null."""
    out = []
    for row in zip(*[text_of(c).to_pylist() for c in columns]):
        text = template.format_map({f: "" if v is None else v for f, v in zip(fields, row)})
        text = re.sub(r"\s+", " ", re.sub(r"\(\s*\)|\[\s*\]", "", text)).strip()
        out.append(text or None)
    return pa.array(out, pa.string())


def join_values(columns: list[pa.Array], sep: str) -> pa.Array:
    out = []
    for row in zip(*[text_of(c).to_pylist() for c in columns]):
        present = [v for v in row if v is not None and v.strip()]
        out.append(sep.join(present) if present else None)
    return pa.array(out, pa.string())


def row_ids(prefix: str, first_row: int, n: int) -> pa.Array:
    """`prefix:N`, N the 1-based data row of the input file: unique within it, stable across runs."""
    return pa.array([f"{prefix}:{first_row + k + 1}" for k in range(n)], pa.string())


def session_ids(users: np.ndarray, ts_us: np.ndarray, valid: np.ndarray, gap_us: int) -> np.ndarray:
    """A session id per row: a user's rows in time order, cut where the gap exceeds `gap_us`.

    The id is a hash of the user and the session's first time, so it does not depend on which other
    users or files are ingested with it. Rows without a user or time get None."""
    ids = np.full(len(users), None, dtype=object)
    rows = np.flatnonzero(valid)
    if not len(rows):
        return ids
    order = rows[np.lexsort((ts_us[rows], users[rows]))]
    u, t = users[order], ts_us[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (u[1:] != u[:-1]) | (np.diff(t) > gap_us)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    keys = {}
    for k in np.flatnonzero(starts):
        keys[k] = hashlib.sha1(f"{u[k]}{UNIT_SEP}{t[k]}".encode()).hexdigest()[:16]
    ids[order] = [keys[f] for f in first]
    return ids
