"""The ingest section of params and the mapping file: loaded, checked, and turned into a Mapping.

`ingest_params` checks the chunk and CSV block sizes; `load_mapping` reads the YAML mapping file
(column renames, feature columns and their types, ts format, unit and time zone, and the `set:` /
`catalog_set:` rules) and rejects what cannot work before any input is read: unknown keys or
columns, a text rule for a number column, a constant that does not fit its column's kind.
"""
from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import yaml

from pipeline.data.contract import EXTRA_FEATURE_PREFIX, ContractError
from pipeline.data.ingest.casting import convert_column
from pipeline.data.ingest.columns import CATALOG, IMPRESSIONS, KINDS, NULLABLE, SCHEMAS, SET_KEYS, TS_UNITS, Mapping
from pipeline.data.ingest.reading import one_line
from pipeline.data.ingest.sets import Rule, ordered, parse_rule

DEFAULTS = {"chunk_rows": 500_000, "csv_block_bytes": 8 << 20}
FEATURE_TYPES = {"int": "int", "int64": "int", "integer": "int", "float": "float", "float64": "float",
                 "double": "float", "string": "text", "str": "text", "category": "text"}
MAPPING_KEYS = ("columns", "catalog_columns", "features", "ts_format", "ts_unit", "ts_timezone", "set",
                "catalog_set")
# Rules that make text: they can only fill text columns (ids, surface, query, title, ...).
TEXT_RULES = ("hash", "row", "session", "template", "join")


def ingest_params(params: dict | None) -> dict:
    section = {**DEFAULTS, **((params or {}).get("ingest") or {})}
    for key in DEFAULTS:
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ingest.{key} must be a positive integer, got {value!r}")
    return section


def load_mapping(path: str | Path | None) -> Mapping:
    if path is None:
        return Mapping()
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ContractError(f"{path}: cannot be read as a YAML mapping file ({one_line(exc)})") from exc
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
