"""The Great Expectations side of validation: an in-memory data context whose Data Docs site is written
into the report folder, one Checkpoint per suite run on its frame, and the translation of GX results (and
of the Arrow schema findings checked before GX runs) into `Check`s. `check_day` puts these together:
it builds the day's rules, skips those whose columns are missing or mistyped, runs the rest and returns
one `Check` per rule in rule order."""
from __future__ import annotations

import os

# Must be set before GX is imported: GX reads it then, and its usage analytics would try the network.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import datetime as dt  # noqa: E402
from pathlib import Path  # noqa: E402

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from pipeline.data.contract import EXTRA_FEATURE_PREFIX  # noqa: E402
from pipeline.data.validate.checks import (  # noqa: E402
    FAILED,
    PASSED,
    SKIPPED,
    Check,
    DayData,
    one_line,
)
from pipeline.data.validate.rules import (  # noqa: E402
    CATALOG,
    COLUMN,
    CONTRACT_KINDS,
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
# COMPLETE is the only format that returns every unexpected row's index, which the quarantine needs.
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 20,
                 "return_unexpected_index_query": False}


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
        check.detail = "raised " + one_line(info.get("exception_message") or "an exception")
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
            check.detail = f"observed {one_line(body['observed_value'], 120)}"
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
