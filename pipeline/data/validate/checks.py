"""The validate stage: check one day of logs against DATA_CONTRACT.md with Great Expectations.

`python -m pipeline validate --data DIR --day YYYY-MM-DD --out REPORT_DIR [--params params.yaml]`

Exit 0: the day keeps the contract (or breaks row-level rules on no more than `validate.max_bad_fraction`
of its rows). Exit 1: it breaks a rule. Exit 2: a file cannot be read. The report folder (data_docs/,
summary.json, metrics.json, quarantine.parquet, quarantine_catalog.parquet) is written in every case but
the last, where only summary.json with the error is written, so no stale report is left behind.
"""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import datetime as dt  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from pipeline.data import drift  # noqa: E402
from pipeline.data.contract import (  # noqa: E402
    EXTRA_FEATURE_PREFIX,
    ContractError,
    DayPaths,
    impression_parts,
    read_catalog,
    read_impressions,
)
from pipeline.data.validate.rules import (  # noqa: E402
    CATALOG,
    COLUMN,
    CONTRACT_KINDS,
    DEFAULT_USER_ID_PATTERNS,
    IMPRESSIONS,
    IN_CATALOG,
    ROW,
    TABLES,
    Rule,
    SchemaFinding,
    catalog_rules,
    check_schemas,
    impression_rules,
    in_catalog_frame,
)

DOCS_SITE = "report"
ID_COLUMN = {IMPRESSIONS: "event_id", CATALOG: "item_id"}
QUARANTINE_FILE = {IMPRESSIONS: "quarantine.parquet", CATALOG: "quarantine_catalog.parquet"}
DEFAULTS = {
    "max_bad_fraction": 0.0,
    "min_rows": 1,
    "min_requests": 1,
    "examples": 5,
    "user_id_patterns": DEFAULT_USER_ID_PATTERNS,
}
# COMPLETE is the only format that returns every unexpected row's index, which the quarantine needs.
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 20,
                 "return_unexpected_index_query": False}
PASSED, FAILED, WARNING, SKIPPED = "passed", "failed", "warning", "skipped"


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


def _sources(data_dir: Path, day: str, data: DayData) -> tuple[tuple[str, str], ...]:
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


# ---------------------------------------------------------------- checking


def _schema_checks(data: DayData, findings: list[SchemaFinding]) -> list[Check]:
    """One type check per typed column present, failed where the Arrow schema says so."""
    checks = []
    for table in TABLES:
        seen: list[str] = []
        for _, schema in data.schemas[table]:
            seen += [n for n in schema.names if n not in seen]
        typed = [n for n in seen if n in CONTRACT_KINDS[table]
                 or (table == IMPRESSIONS and n.startswith(EXTRA_FEATURE_PREFIX))]
        by_column = {(f.column, f.expectation_type): f for f in findings if f.table == table}
        for name in typed:
            check = Check(table, f"expect_column_type_to_be({name})", "expect_column_type_to_be", [name],
                          COLUMN, "arrow_schema")
            finding = by_column.get((name, "expect_column_type_to_be"))
            if finding:
                check.status = FAILED
                check.detail = f"{finding.detail} ({', '.join(finding.files)})"
            checks.append(check)
        for finding in findings:
            if finding.table == table and finding.expectation_type != "expect_column_type_to_be":
                checks.append(Check(table, finding.rule, finding.expectation_type, [finding.column], COLUMN,
                                    "arrow_schema", status=FAILED,
                                    detail=f"{finding.detail} ({', '.join(finding.files)})"))
    return checks


def _docs_context(docs_dir: Path):
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={DOCS_SITE: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            # GX wants an absolute base_directory when the context has no root folder.
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suites(frames: dict[str, pd.DataFrame], rules: dict[str, list[Rule]], docs_dir: Path,
               run_name: str) -> dict[str, object]:
    """Run each suite on its frame through a Checkpoint that also writes the Data Docs site into docs_dir.

    Returns the ExpectationValidationResult of every rule, by (suite, rule label).
    """
    context = _docs_context(docs_dir)
    run_time = dt.datetime.now(dt.timezone.utc)
    source = context.data_sources.add_pandas("contract")
    by_label = {}
    for name, suite_rules in rules.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_day")
        # Adding expectations one by one re-serialises the whole suite each time: build it whole.
        suite = context.suites.add(gx.ExpectationSuite(name=name,
                                                       expectations=[r.expectation for r in suite_rules]))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        # A checkpoint's batch_parameters go to all its definitions, so one checkpoint per frame.
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format=RESULT_FORMAT))
        result = checkpoint.run(batch_parameters={"dataframe": frames[name]},
                                run_id=RunIdentifier(run_name=run_name, run_time=run_time))
        for suite_result in result.run_results.values():
            for item in suite_result.results:
                by_label[(name, item.expectation_config.meta["rule"])] = item
    return by_label


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _examples(frame: pd.DataFrame, table: str, rows: list, usable: set[str], count: int) -> list[str]:
    column = ID_COLUMN[table]
    ids = frame.loc[rows, column].tolist() if column in usable else [None] * len(rows)
    # Rows without a usable id are named by their position in the day's table.
    named = [f"row {r}" if pd.isna(v) else str(v) for r, v in zip(rows, ids)]
    return list(dict.fromkeys(named))[:count]


def _gx_check(rule: Rule, result, frame: pd.DataFrame, usable: set[str], examples: int) -> Check:
    check = Check(rule.table, rule.label, rule.expectation.expectation_type, list(rule.columns), rule.level,
                  "great_expectations")
    info = result.exception_info or {}
    if info.get("raised_exception"):
        check.status = FAILED
        check.level = COLUMN  # nothing row-level to quarantine when the check itself broke
        check.detail = "raised " + _one_line(info.get("exception_message") or "an exception")
        return check
    body = result.result or {}
    check.status = PASSED if result.success else FAILED
    if rule.level == ROW:
        check.unexpected_count = int(body.get("unexpected_count") or 0)
        check.unexpected_percent = float(body.get("unexpected_percent") or 0.0)
        rows = [r for r in body.get("unexpected_index_list") or [] if not isinstance(r, dict)]
        check.rows = rows
        if not result.success:
            check.examples = _examples(frame, rule.table, rows, usable, examples)
    elif not result.success:
        mismatched = (body.get("details") or {}).get("mismatched") or {}
        if mismatched.get("unexpected"):
            check.detail = "unexpected column(s): " + ", ".join(map(str, mismatched["unexpected"]))
        elif "observed_value" in body and rule.expectation.expectation_type != "expect_column_to_exist":
            check.detail = f"observed {_one_line(body['observed_value'], 120)}"
    return check


def check_day(data: DayData, day: str, section: dict, docs_dir: Path) -> list[Check]:
    findings = [f for table in TABLES for f in check_schemas(table, data.schemas[table])]
    checks = _schema_checks(data, findings)
    frames = {IMPRESSIONS: data.impressions, CATALOG: data.catalog}
    bad_types = {(f.table, f.column) for f in findings if f.expectation_type == "expect_column_type_to_be"}
    usable = {(table, c) for table, frame in frames.items() for c in frame.columns if (table, c) not in bad_types}

    start = pd.Timestamp(day, tz="UTC")
    rules = {
        IMPRESSIONS: impression_rules(day_start=start, day_end=start + pd.Timedelta(days=1),
                                      present_columns=list(data.impressions.columns),
                                      min_rows=section["min_rows"],
                                      user_id_patterns=dict(section["user_id_patterns"])),
        CATALOG: catalog_rules(present_columns=list(data.catalog.columns)),
    }
    runnable: dict[str, list[Rule]] = {}
    skipped: dict[tuple[str, str], Check] = {}
    for table, table_rules in rules.items():
        for rule in table_rules:
            missing = [f"{t}.{c}" if t != table else c for t, c in rule.needs if (t, c) not in usable]
            if missing and rule.expectation.expectation_type != "expect_column_to_exist":
                skipped[(rule.suite, rule.label)] = Check(table, rule.label, rule.expectation.expectation_type,
                                            list(rule.columns), rule.level, "great_expectations",
                                            status=SKIPPED,
                                            detail=f"not run: {', '.join(missing)} missing or of the wrong type")
            else:
                runnable.setdefault(rule.suite, []).append(rule)
    suite_frames = dict(frames)
    if IN_CATALOG in runnable:
        suite_frames[IN_CATALOG] = in_catalog_frame(data.impressions, data.catalog)
    results = run_suites(suite_frames, runnable, docs_dir, run_name=day)
    for table, table_rules in rules.items():
        table_usable = {c for t, c in usable if t == table}
        for rule in table_rules:
            key = (rule.suite, rule.label)
            if key in skipped:
                checks.append(skipped[key])
            else:
                checks.append(_gx_check(rule, results[key], frames[table], table_usable,
                                        section["examples"]))
    return checks


def _tolerate(checks: list[Check], frames: dict[str, pd.DataFrame], max_bad_fraction: float) -> dict[str, dict]:
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


# ---------------------------------------------------------------- writing


def _quarantine(frame: pd.DataFrame, checks: list[Check], row_files: np.ndarray | None) -> pd.DataFrame:
    pieces = []
    for order, check in enumerate(checks):
        if check.level == ROW and check.status in (FAILED, WARNING) and check.rows:
            rows = sorted(check.rows)
            piece = frame.loc[rows].copy()
            piece["rule"] = check.rule
            if row_files is not None:
                piece["source_file"] = row_files[frame.index.get_indexer(rows)]
            piece["_order"] = order
            pieces.append(piece)
    if not pieces:
        empty = frame.iloc[0:0].copy()
        empty["rule"] = pd.Series(dtype="str")
        if row_files is not None:
            empty["source_file"] = pd.Series(dtype="str")
        return empty.reset_index(drop=True)
    out = pd.concat(pieces)
    out["_row"] = out.index
    out = out.sort_values(["_row", "_order"], kind="stable").drop(columns=["_row", "_order"])
    return out.reset_index(drop=True)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):
        # Mixed-type columns (parts that disagree on a type) cannot map to one Arrow type: keep them as text.
        frame = frame.copy()
        for name in frame.columns:
            if frame[name].dtype == object:
                frame[name] = frame[name].map(lambda v: None if v is None else str(v)).astype("str")
        table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path)


def _metric(frame: pd.DataFrame, column: str, usable: bool):
    if not usable or len(frame) == 0:
        return None
    try:
        return round(float(pd.to_numeric(frame[column]).mean()), 6)
    except (TypeError, ValueError):
        return None


def _metrics(data: DayData, checks: list[Check], tables: dict, quarantined: int) -> dict:
    imp = data.impressions
    typed_ok = {c.columns[0] for c in checks if c.table == IMPRESSIONS
                and c.expectation_type == "expect_column_type_to_be" and c.status == PASSED}
    search_share = None
    if {"request_id", "surface"} <= typed_ok and len(imp):
        per_request = imp.groupby("request_id", sort=False)["surface"].first()
        search_share = round(float((per_request == "search").mean()), 6) if len(per_request) else None
    return {
        "rows": len(imp),
        "catalog_rows": len(data.catalog),
        "ctr": _metric(imp, "clicked", "clicked" in typed_ok),
        "purchase_rate": _metric(imp, "purchased", "purchased" in typed_ok),
        "search_share": search_share,  # share of requests (not rows) that are searches
        "rules_checked": sum(c.status != SKIPPED for c in checks),
        "rules_failed": sum(c.status in (FAILED, WARNING) for c in checks),
        "rules_warned": sum(c.status == WARNING for c in checks),
        "rules_skipped": sum(c.status == SKIPPED for c in checks),
        "bad_rows": tables[IMPRESSIONS]["bad_rows"],
        "bad_fraction": tables[IMPRESSIONS]["bad_fraction"],
        "quarantined_rows": quarantined,
    }


def _order_for_headline(checks: list[Check]) -> list[Check]:
    """Per table, shape failures (type, missing column) before row-level ones, each in rule order."""
    return sorted(checks, key=lambda c: (TABLES.index(c.table), c.level == ROW))


def _readable(folder: Path) -> None:
    # mkdtemp makes the folder private (0700); a report is meant to be read by others.
    folder.chmod(0o755)


# Columns the drift statistics read; with any of them broken the statistics would mislead.
DRIFT_COLUMNS = ("clicked", "purchased", "position", "item_id", "query", "price")


@dataclass
class Window:
    """The earlier days the day is compared with (drift, and event_id uniqueness across days)."""

    frames: list[tuple[str, pd.DataFrame]]
    unreadable: list[str]


def _window(data_dir: Path, day: str, section: dict, window_file: str | Path | None) -> Window | None:
    cfg = section.get("drift")
    if not cfg:
        return None
    if window_file is not None:
        earlier = [entry["day"] for entry in json.loads(Path(window_file).read_text())["previous"]]
    else:
        earlier = drift.previous_days(data_dir, day, int(cfg["window_days"]))
    return Window(*drift.load_window(data_dir, earlier))


def _enough_requests(data: DayData, minimum: int, usable: bool) -> Check:
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


def _unique_across_days(data: DayData, window: Window | None, usable: bool) -> Check:
    """DATA_CONTRACT.md: event_id is unique across all days; checked against the window's days."""
    check = Check(IMPRESSIONS, "event_id unique across days (the drift window)", "event_id_unique_across_days",
                  ["event_id"], ROW, "window")
    if window is None or not usable:
        check.status = SKIPPED
        check.detail = "no window of earlier days" if usable else "not run: event_id missing or of the wrong type"
        return check
    first_seen: dict = {}
    for earlier, frame in window.frames:
        first_seen.update((event_id, earlier) for event_id in frame["event_id"].dropna() if event_id not in first_seen)
    repeated = data.impressions["event_id"].isin(first_seen.keys())
    check.unexpected_count = int(repeated.sum())
    check.unexpected_percent = 100.0 * check.unexpected_count / max(len(repeated), 1)
    check.rows = list(data.impressions.index[repeated])
    if check.unexpected_count:
        check.status = FAILED
        check.examples = [str(v) for v in data.impressions.loc[check.rows[:5], "event_id"]]
        days = sorted({first_seen[e] for e in data.impressions.loc[check.rows, "event_id"]})
        check.detail = f"already logged on {', '.join(days[:5])}" + (" and more" if len(days) > 5 else "")
    return check


def _drift(day: str, data: DayData, checks: list[Check], section: dict, window: Window | None) -> dict:
    if window is None:
        return {"skipped": "no validate.drift section in params", "checks": [], "statistics": []}
    broken = sorted({col for c in checks if c.table == IMPRESSIONS and c.level != ROW and c.status == FAILED
                     for col in c.columns if col in DRIFT_COLUMNS})
    if broken:
        return {"skipped": f"column(s) {', '.join(broken)} broken", "checks": [], "statistics": []}
    return drift.drift_report(day, data.impressions, window.frames, window.unreadable, section["drift"])


# ---------------------------------------------------------------- CLI


