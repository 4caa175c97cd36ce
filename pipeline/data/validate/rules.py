"""DATA_CONTRACT.md as rules: Arrow type checks run before Great Expectations, one GX suite per table,
and one more suite for the rule across tables (every impression's item is in that day's catalog)."""
from __future__ import annotations

import os

# Must be set before GX is imported: GX reads it then, and its usage analytics would try the network.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from dataclasses import dataclass  # noqa: E402

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from great_expectations import expectations as gxe  # noqa: E402
from great_expectations.expectations.expectation import (  # noqa: E402
    ColumnMapExpectation,
    ColumnPairMapExpectation,
    Expectation,
    MulticolumnMapExpectation,
)
from great_expectations.expectations.row_conditions import Column, Condition  # noqa: E402

from pipeline.data.contract import (  # noqa: E402
    CATALOG_SCHEMA,
    EXTRA_FEATURE_PREFIX,
    IMPRESSION_SCHEMA,
    SURFACES,
)

IMPRESSIONS = "impressions"
CATALOG = "catalog"
TABLES = (IMPRESSIONS, CATALOG)
# GX on pandas sees one frame per batch, so the rule across tables runs on its own frame: the impressions'
# item_id beside the catalog's item_id left-joined onto it (null where the catalog lacks the item).
IN_CATALOG = "impressions_in_catalog"
CATALOG_ITEM_ID = "catalog_item_id"

# Columns the contract marks "or null"; every other contract column must be filled.
NULLABLE = {
    IMPRESSIONS: frozenset({"query", "propensity", "price"}),
    CATALOG: frozenset({"category", "brand", "price"}),
}
SCHEMAS = {IMPRESSIONS: IMPRESSION_SCHEMA, CATALOG: CATALOG_SCHEMA}
UTC_NAMES = frozenset({"utc", "etc/utc", "z", "+00:00", "gmt", "etc/gmt"})

DEFAULT_USER_ID_PATTERNS = {
    "email": r"[^@\s]+@[^@\s]+\.[^@\s]+",
    "phone": r"^\+?[0-9][0-9 ().-]{8,18}[0-9]$",
}

# Row-level rules mark individual rows (those rows can be quarantined); the others judge the table's
# shape as a whole and always fail the day.
ROW = "row"
COLUMN = "column"
TABLE = "table"


def contract_kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    return "string"


CONTRACT_KINDS = {
    table: {field.name: contract_kind(field.type) for field in schema}
    for table, schema in SCHEMAS.items()
}


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def type_problem(kind: str, arrow_type: pa.DataType, nullable: bool) -> str | None:
    """Why `arrow_type` does not hold the contract's `kind`, or None when it does."""
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if pa.types.is_null(t):
        # A column written with no values at all: only acceptable where nulls are.
        return None if nullable else "has no values (Arrow type null)"
    if kind == "string":
        ok = _is_string(t)
    elif kind == "int":
        ok = pa.types.is_integer(t)
    elif kind == "float":
        # Whole-number prices are still numbers; widening an int to float loses nothing here.
        ok = pa.types.is_floating(t) or pa.types.is_integer(t)
    elif kind == "timestamp":
        if not pa.types.is_timestamp(t):
            ok = False
        elif t.tz is None:
            return f"is {arrow_type} without a time zone, the contract says timestamp (UTC)"
        elif t.tz.lower() not in UTC_NAMES:
            return f"is {arrow_type}, the contract says timestamp (UTC)"
        else:
            ok = True
    elif kind == "feature":
        ok = _is_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    else:
        raise ValueError(f"unknown contract type {kind!r}")
    if ok:
        return None
    want = "number or string" if kind == "feature" else kind
    return f"is {arrow_type}, the contract says {want}"


@dataclass(frozen=True)
class SchemaFinding:
    """A problem seen in a file's Arrow schema, before any value is looked at."""

    table: str
    column: str
    expectation_type: str
    detail: str
    files: tuple[str, ...]

    @property
    def rule(self) -> str:
        return f"{self.expectation_type}({self.column})"


def check_schemas(table: str, schemas: list[tuple[str, pa.Schema]]) -> list[SchemaFinding]:
    """Type checks per file, and columns that only some files of a day have."""
    kinds = dict(CONTRACT_KINDS[table])
    problems: dict[tuple[str, str, str], list[str]] = {}
    all_columns: list[str] = []
    for _, schema in schemas:
        for name in schema.names:
            if name not in all_columns:
                all_columns.append(name)
    for file_name, schema in schemas:
        for arrow_field in schema:
            kind = kinds.get(arrow_field.name)
            if kind is None:
                if table != IMPRESSIONS or not arrow_field.name.startswith(EXTRA_FEATURE_PREFIX):
                    continue  # an unexpected column: the GX column-set rule reports it
                kind = "feature"
            problem = type_problem(kind, arrow_field.type, arrow_field.name in NULLABLE[table]
                                   or kind == "feature")
            if problem:
                problems.setdefault((arrow_field.name, "expect_column_type_to_be", problem), []).append(
                    file_name)
        if len(schemas) > 1:
            for name in all_columns:
                if name not in schema.names:
                    problems.setdefault((name, "expect_column_to_exist", "missing in some files of the day"),
                                        []).append(file_name)
    return [SchemaFinding(table, column, etype, detail, tuple(files))
            for (column, etype, detail), files in problems.items()]


@dataclass(frozen=True)
class Rule:
    table: str  # the table whose rows it judges
    suite: str
    expectation: Expectation
    columns: tuple[str, ...]  # the columns it is about
    needs: tuple[tuple[str, str], ...]  # (table, column) it reads, row conditions and other tables included
    level: str
    label: str


def _target_columns(expectation: Expectation) -> tuple[str, ...]:
    if getattr(expectation, "column_list", None):
        return tuple(expectation.column_list)
    if getattr(expectation, "column_A", None):
        return (expectation.column_A, expectation.column_B)
    if getattr(expectation, "column", None):
        return (expectation.column,)
    return ()


def _level(expectation: Expectation) -> str:
    if isinstance(expectation, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)):
        return ROW
    return COLUMN if _target_columns(expectation) else TABLE


class _RuleBook:
    def __init__(self, table: str):
        self.table = table
        self.rules: list[Rule] = []
        self.suite = table

    def add(self, expectation: Expectation, note: str, *, where: tuple[str, str] | None = None,
            label: str | None = None, also_needs: tuple[tuple[str, str], ...] = ()) -> None:
        """`where` = (column, value): the rule applies to rows whose column equals value."""
        columns = _target_columns(expectation)
        needs = tuple((self.table, c) for c in columns if self.suite == self.table) + also_needs
        if label is None:
            label = f"{expectation.expectation_type}({', '.join(columns)})"
        if where is not None:
            label = f"{label[:-1]} where {where[0]} == {where[1]!r})"
            needs += ((self.table, where[0]),)
        if any(rule.label == label for rule in self.rules):
            raise ValueError(f"two rules are labelled {label}")
        expectation.meta = {"rule": label}
        expectation.notes = note
        self.rules.append(Rule(self.table, self.suite, expectation, columns, needs, _level(expectation), label))


def _when(column: str, value: str) -> Condition:
    return Column(column) == value


def impression_rules(*, day_start: pd.Timestamp, day_end: pd.Timestamp,
                     present_columns: list[str], min_rows: int,
                     user_id_patterns: dict[str, str]) -> list[Rule]:
    book = _RuleBook(IMPRESSIONS)
    add = book.add
    contract_columns = IMPRESSION_SCHEMA.names
    for name in contract_columns:
        add(gxe.ExpectColumnToExist(column=name), "every contract column is present")
    allowed = [c for c in present_columns if c in contract_columns or c.startswith(EXTRA_FEATURE_PREFIX)]
    add(gxe.ExpectTableColumnsToMatchSet(column_set=allowed, exact_match=True),
        f"columns other than the contract's must start with {EXTRA_FEATURE_PREFIX}",
        label=f"expect_table_columns_to_match_set(extra columns must start with {EXTRA_FEATURE_PREFIX})")
    add(gxe.ExpectTableRowCountToBeBetween(min_value=min_rows), "a day has impressions",
        label="expect_table_row_count_to_be_between(rows)")
    for name in contract_columns:
        if name not in NULLABLE[IMPRESSIONS]:
            add(gxe.ExpectColumnValuesToNotBeNull(column=name), f"{name} is always filled")
    add(gxe.ExpectColumnValuesToBeUnique(column="event_id"), "event_id is unique")
    add(gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=day_start, max_value=day_end, strict_max=True),
        f"ts lies inside the folder's day: [{day_start.isoformat()}, {day_end.isoformat()})")
    add(gxe.ExpectColumnValuesToNotMatchRegexList(column="user_id", regex_list=list(user_id_patterns.values())),
        "user_id is pseudonymous: never an e-mail address or phone number ("
        + ", ".join(user_id_patterns) + ")")
    add(gxe.ExpectColumnValuesToBeInSet(column="surface", value_set=list(SURFACES)),
        "surface is search or recommend")
    add(gxe.ExpectColumnValuesToNotBeNull(column="query", row_condition=_when("surface", "search")),
        "a search has a query", where=("surface", "search"))
    add(gxe.ExpectColumnValuesToMatchRegex(column="query", regex=r"\S", row_condition=_when("surface", "search")),
        "a search's query is not empty or blank", where=("surface", "search"))
    add(gxe.ExpectColumnValuesToBeNull(column="query", row_condition=_when("surface", "recommend")),
        "a recommendation has no query", where=("surface", "recommend"))
    add(gxe.ExpectColumnValuesToBeBetween(column="position", min_value=1), "position is 1-based")
    add(gxe.ExpectCompoundColumnsToBeUnique(column_list=["request_id", "position"]),
        "position is unique within a request")
    for name in ("clicked", "purchased"):
        add(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=[0, 1]), f"{name} is 0 or 1")
    add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="clicked", column_B="purchased", or_equal=True),
        "purchased = 1 implies clicked = 1")
    add(gxe.ExpectColumnValuesToBeBetween(column="propensity", min_value=0, max_value=1, strict_min=True),
        "propensity is in (0, 1] when known")
    add(gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0), "price is >= 0 when known")
    # A value_set holding the whole catalog would do, but GX copies an expectation's arguments many times
    # per run: a 200,000-item catalog made one run take half a minute. The join is linear.
    book.suite = IN_CATALOG
    add(gxe.ExpectColumnPairValuesToBeEqual(column_A="item_id", column_B=CATALOG_ITEM_ID),
        "item_id is in that day's catalog (catalog_item_id: the catalog's item_id joined on it)",
        label="expect_column_pair_values_to_be_equal(item_id, catalog.item_id)",
        also_needs=((IMPRESSIONS, "item_id"), (CATALOG, "item_id")))
    return book.rules


def in_catalog_frame(impressions: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """The frame the rule across tables reads, indexed like the impressions."""
    known = pd.Index(catalog["item_id"].dropna().unique())
    item_id = impressions["item_id"]
    return pd.DataFrame({"item_id": item_id, CATALOG_ITEM_ID: item_id.where(item_id.isin(known))},
                        index=impressions.index)


def catalog_rules(*, present_columns: list[str]) -> list[Rule]:
    book = _RuleBook(CATALOG)
    add = book.add
    contract_columns = CATALOG_SCHEMA.names
    for name in contract_columns:
        add(gxe.ExpectColumnToExist(column=name), "every contract column is present")
    add(gxe.ExpectTableColumnsToMatchSet(column_set=[c for c in present_columns if c in contract_columns],
                                         exact_match=True),
        "the catalog has no columns beyond the contract's",
        label="expect_table_columns_to_match_set(no extra columns)")
    for name in contract_columns:
        if name not in NULLABLE[CATALOG]:
            add(gxe.ExpectColumnValuesToNotBeNull(column=name), f"{name} is always filled")
    add(gxe.ExpectColumnValuesToBeUnique(column="item_id"), "item_id is unique")
    add(gxe.ExpectColumnValuesToMatchRegex(column="title", regex=r"\S"), "title is not empty or blank")
    add(gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0), "price is >= 0 when known")
    return book.rules
