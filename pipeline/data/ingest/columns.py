"""The contract's columns as ingest reads them, and the Mapping that names a log's columns after them.

The two tables (impressions and the catalog), the kind each contract column is read as, the columns
that may be null, the epoch units a ts may be given in, the mapping keys that set columns, and the
`Mapping` dataclass: the parsed mapping file (renames, features, ts settings and set rules) that
every later step of ingest reads. No step of ingest is below this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.data.contract import CATALOG_SCHEMA, EXTRA_FEATURE_PREFIX, IMPRESSION_SCHEMA

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
TS_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}
SET_KEYS = {IMPRESSIONS: "set", CATALOG: "catalog_set"}
DAY_US = 86_400 * 1_000_000

Log = Callable[[str], None]


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
