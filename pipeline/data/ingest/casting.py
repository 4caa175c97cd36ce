"""Casting one column of a chunk to its contract kind, row by row, with the reason each bad row fails.

A value that does not fit (a ts that does not parse, a position that is not a number, clicked not
0/1, a time outside years 1000-9999 or skipped by a DST change) becomes null and is named in the
returned problems, so the caller quarantines that row instead of failing the file. Text is matched
against the patterns below before any cast; epoch numbers and wall-clock times follow the mapping's
ts_unit, ts_format and ts_timezone.
"""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.ingest.columns import DAY_US, TS_UNITS, Mapping

TS_TYPE = pa.timestamp("us", tz="UTC")
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


Problems = list[tuple[str, np.ndarray]]


def to_mask(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _plain(column) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    return arr


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


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
    bad = to_mask(pc.and_(pc.is_valid(trimmed), pc.invert(ok)))
    if pa.types.is_integer(to):
        trimmed = pc.replace_substring_regex(trimmed, r"^\+|\.0*$", "")
    values, cast_bad = _cast_rowwise(pc.if_else(ok, trimmed, pa.scalar(None, pa.string())), to)
    return values, bad | cast_bad


def _to_int(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.int64()), np.zeros(len(arr), dtype=bool)
    if is_text(t):
        return _parse_numbers(arr, INT_RE, pa.int64())
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return _cast_rowwise(arr, pa.int64())
    floats = pc.cast(arr, pa.float64(), safe=False)
    ok = pc.and_(pc.and_(pc.is_finite(floats), pc.equal(pc.floor(floats), floats)),
                 pc.less(pc.abs(floats), 2.0 ** 63))
    bad = to_mask(pc.and_(pc.is_valid(floats), pc.invert(ok)))
    values, cast_bad = _cast_rowwise(pc.if_else(ok, floats, pa.scalar(None, pa.float64())), pa.int64())
    return values, bad | cast_bad


def _to_float(arr: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(values, not a number, not finite)."""
    t = arr.type
    if pa.types.is_null(t):
        nothing = np.zeros(len(arr), dtype=bool)
        return pa.nulls(len(arr), pa.float64()), nothing, nothing
    if is_text(t):
        values, bad = _parse_numbers(arr, FLOAT_RE, pa.float64())
    else:
        values, bad = _cast_rowwise(arr, pa.float64(), safe=not pa.types.is_decimal(t))
    infinite = to_mask(pc.is_inf(values))
    return _null_where(values, infinite), bad, infinite


def _to_string(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    if is_text(arr.type):
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
    bad = to_mask(pc.not_equal(early, late))
    return _null_where(pc.cast(early, TS_TYPE), bad), bad


def _epoch_to_ts(arr: pa.Array, unit: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Epoch numbers (ints, floats or their text) in `unit` to UTC microseconds: (ts, not a number, out of range)."""
    factor = TS_UNITS[unit]
    if is_text(arr.type):
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
    valid = ~bad & to_mask(pc.or_(pc.is_valid(ints), pc.is_valid(floats)))
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
    elif is_text(t) and mapping.ts_format:
        text = pc.utf8_trim_whitespace(arr)
        aware = "%z" in mapping.ts_format or "%Z" in mapping.ts_format
        parsed = pd.to_datetime(text.to_pandas(), format=mapping.ts_format, errors="coerce", utc=aware)
        values = pa.Array.from_pandas(parsed)
        bad = to_mask(pc.and_(pc.is_valid(text), pc.is_null(values)))
        problems.append((f"ts: does not match ts_format {mapping.ts_format!r}", bad))
        if aware:
            out = pc.cast(values, TS_TYPE, safe=False)
        else:
            out, bad_local = _localize(pc.cast(values, pa.timestamp("us"), safe=False), zone)
            problems.append((f"ts: local time skipped or repeated by a DST change in {zone}", bad_local))
    elif is_text(t):
        text = pc.utf8_trim_whitespace(arr)
        ok = pc.match_substring_regex(text, ISO_RE)
        bad = to_mask(pc.and_(pc.is_valid(text), pc.invert(ok)))
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
    problems.append(("ts: missing", to_mask(pc.is_null(arr))))
    problems.append(("ts: outside years 1000-9999",
                     to_mask(pc.or_(pc.less(us, MIN_US), pc.greater_equal(us, MAX_US)))))
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
        bad = bad | to_mask(pc.and_(pc.is_valid(out), pc.invert(pc.is_in(out, pa.array([0, 1], pa.int64())))))
        return _null_where(out, bad), [(f"{name}: not 0 or 1", bad)]
    if kind == "float":
        out, bad, infinite = _to_float(arr)
        return out, [(f"{name}: not a number", bad), (f"{name}: not a finite number", infinite)]
    raise ValueError(kind)


def as_text(arr: pa.Array) -> pa.Array:
    arr = _plain(arr)
    if is_text(arr.type):
        return arr
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())
