"""What the validate stage's parts share: the verdict of one rule (`Check`) and of the whole day
(`ValidationOutcome`), the statuses a check can end in, the `validate` params with their defaults, the
day's two tables as read from disk (`DayData`, `read_day`), and the verdict steps that need no Great
Expectations: the min_requests check and `tolerate`, which lets row-level failures within
validate.max_bad_fraction through as warnings. The suites, window and outputs modules build on these."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.contract import (
    ContractError,
    DayPaths,
    impression_parts,
    read_catalog,
    read_impressions,
)
from pipeline.data.validate.rules import (
    CATALOG,
    DEFAULT_USER_ID_PATTERNS,
    IMPRESSIONS,
    IN_CATALOG,
    ROW,
    TABLES,
)

DEFAULTS = {
    "max_bad_fraction": 0.0,
    "min_rows": 1,
    "min_requests": 1,
    "examples": 5,
    "user_id_patterns": DEFAULT_USER_ID_PATTERNS,
}
PASSED, FAILED, WARNING, SKIPPED = "passed", "failed", "warning", "skipped"


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ValidationOutcome:
    day: str
    success: bool
    failures: tuple[str, ...]  # "table: rule detail", the rules that fail the day
    warnings: tuple[str, ...]  # row-level failures let through by max_bad_fraction
    rows: int
    catalog_rows: int
    rules_checked: int
    rules_failed: int
    quarantined_rows: int
    report_dir: str
    details: tuple[str, ...] = ()  # one line per failed or tolerated rule, with more examples
    sources: tuple[tuple[str, str], ...] = ()  # (table, the file or folder it was read from)

    def headline(self) -> str:
        """One line: on failure it names every failed rule, its column(s), table and file."""
        if not self.success:
            return f"validate: {self.day} FAILED {_join_by_table(self.failures, dict(self.sources))}"
        text = f"validate: {self.day} OK {self.rows} rows, {self.catalog_rows} catalog items, " \
               f"{self.rules_checked} rules"
        if self.warnings:
            text += f"; WARNINGS {_join_by_table(self.warnings)}"
        return text


def _join_by_table(items: tuple[str, ...], sources: dict[str, str] | None = None) -> str:
    by_table: dict[str, list[str]] = {}
    for item in items:
        table, _, text = item.partition(": ")
        by_table.setdefault(table, []).append(text)
    sources = sources or {}
    return " | ".join(f"{table}" + (f" ({sources[table]})" if table in sources else "") + ": " + "; ".join(texts)
                      for table, texts in by_table.items())


def sources(data_dir: Path, day: str, data: DayData) -> tuple[tuple[str, str], ...]:
    paths = DayPaths(data_dir, day)
    parts = data.schemas[IMPRESSIONS]
    impressions = str(paths.impressions_dir / parts[0][0]) if len(parts) == 1 else \
        f"{paths.impressions_dir}/ ({len(parts)} files)"
    return ((IMPRESSIONS, impressions), (IN_CATALOG, impressions), (CATALOG, str(paths.catalog_file)))


@dataclass
class Check:
    """One rule's verdict on one table, as summary.json shows it."""

    table: str
    rule: str
    expectation_type: str
    columns: list[str]
    level: str
    source: str  # "great_expectations" or "arrow_schema"
    status: str = PASSED
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[str] = field(default_factory=list)
    detail: str = ""
    rows: list = field(default_factory=list)  # frame index of the unexpected rows (not in the summary)

    def text(self, examples: int = 3, percent: bool = False) -> str:
        parts = [self.rule]
        if self.unexpected_count is not None:
            noun = "row" if self.unexpected_count == 1 else "rows"
            parts.append(f"{self.unexpected_count} unexpected {noun}")
            if percent and self.unexpected_percent is not None:
                parts.append(f"({self.unexpected_percent:.3g}% of those checked)")
            if self.examples:
                parts.append(f"(e.g. {', '.join(self.examples[:examples])})")
        if self.detail:
            parts.append(self.detail)
        return f"{self.table}: " + " ".join(parts)

    def to_json(self) -> dict:
        return {
            "table": self.table, "rule": self.rule, "expectation_type": self.expectation_type,
            "columns": self.columns, "level": self.level, "source": self.source, "status": self.status,
            "success": None if self.status == SKIPPED else self.status == PASSED,
            "unexpected_count": self.unexpected_count,
            "unexpected_percent": None if self.unexpected_percent is None else round(self.unexpected_percent, 6),
            "examples": self.examples, "detail": self.detail,
        }


def validate_params(params: dict | None) -> dict:
    section = dict(DEFAULTS)
    section.update((params or {}).get("validate") or {})
    fraction = section["max_bad_fraction"]
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"validate.max_bad_fraction must be a number in [0, 1], got {fraction!r}")
    for key in ("min_rows", "min_requests"):
        if isinstance(section[key], bool) or not isinstance(section[key], int) or section[key] < 0:
            raise ValueError(f"validate.{key} must be a whole number >= 0, got {section[key]!r}")
    patterns = section["user_id_patterns"]
    if not isinstance(patterns, dict) or not patterns:
        raise ValueError("validate.user_id_patterns must map names to regular expressions")
    for name, pattern in patterns.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"validate.user_id_patterns.{name}: not a regular expression ({exc})") from exc
    return section


# ---------------------------------------------------------------- reading


@dataclass
class DayData:
    impressions: pd.DataFrame
    catalog: pd.DataFrame
    schemas: dict[str, list[tuple[str, pa.Schema]]]
    row_files: np.ndarray | None  # the part file each impression row came from


def _file_meta(path: Path) -> tuple[pa.Schema, int]:
    try:
        meta = pq.read_metadata(path)
        return meta.schema.to_arrow_schema(), meta.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise ContractError(f"{path}: cannot be read as Parquet ({exc})") from exc


def read_day(data_dir: Path, day: str) -> DayData:
    """Both tables of one day; ContractError names the first file that cannot be read."""
    paths = DayPaths(Path(data_dir), day)
    impressions = read_impressions(data_dir, day)
    catalog = read_catalog(data_dir, day)
    parts = impression_parts(paths)
    metas = [_file_meta(part) for part in parts]
    schemas = {
        IMPRESSIONS: [(part.name, schema) for part, (schema, _) in zip(parts, metas)],
        CATALOG: [(paths.catalog_file.name, _file_meta(paths.catalog_file)[0])],
    }
    counts = [n for _, n in metas]
    row_files = np.repeat([p.name for p in parts], counts) if sum(counts) == len(impressions) else None
    return DayData(impressions, catalog, schemas, row_files)


# ---------------------------------------------------------------- verdict


def tolerate(checks: list[Check], frames: dict[str, pd.DataFrame], max_bad_fraction: float) -> dict[str, dict]:
    """Per table: bad rows and their share; row-level failures within max_bad_fraction become warnings."""
    tables = {}
    for table in TABLES:
        failed = [c for c in checks if c.table == table and c.status == FAILED]
        bad_rows = sorted({r for c in failed if c.level == ROW for r in c.rows})
        n = len(frames[table])
        fraction = len(bad_rows) / n if n else 0.0
        only_rows = failed and all(c.level == ROW for c in failed)
        if only_rows and fraction <= max_bad_fraction:
            for c in failed:
                c.status = WARNING
        tables[table] = {"rows": n, "bad_rows": len(bad_rows), "bad_fraction": round(fraction, 6)}
    return tables


def enough_requests(data: DayData, minimum: int, usable: bool) -> Check:
    """A day of a few ranked lists cannot be split into training, calibration, validation and held-out
    requests (split.holdout_fraction, train.calibration_fraction, train.validation_fraction)."""
    check = Check(IMPRESSIONS, f"a day has at least validate.min_requests={minimum} requests", "min_requests",
                  ["request_id"], "table", "pandas")
    if not usable:
        check.status, check.detail = SKIPPED, "not run: request_id missing or of the wrong type"
        return check
    requests = int(data.impressions["request_id"].nunique())
    if requests < minimum:
        check.status = FAILED
        check.detail = (f"(only {requests}): too few to hold out whole requests for evaluation, calibration "
                        f"and early stopping; bring a longer log or lower validate.min_requests")
    return check
