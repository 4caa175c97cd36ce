"""The validate stage: check one day of logs against DATA_CONTRACT.md with Great Expectations.

`python -m pipeline validate --data DIR --day YYYY-MM-DD --out REPORT_DIR [--params params.yaml]`

Exit 0: the day keeps the contract (or breaks row-level rules on no more than `validate.max_bad_fraction`
of its rows). Exit 1: it breaks a rule. Exit 2: a file cannot be read. The report folder (data_docs/,
summary.json, metrics.json, quarantine.parquet, quarantine_catalog.parquet) is written in every case but
the last, where only summary.json with the error is written, so no stale report is left behind.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import pandas as pd
import yaml

from pipeline.atomic import atomic_dir, dumps_json, write_bytes_atomic
from pipeline.data.contract import (
    ContractError,
    parse_day,
)
from pipeline.data.validate import report as validate_report
from pipeline.data.validate.checks import (
    FAILED,
    WARNING,
    ValidationOutcome,
    enough_requests,
    one_line,
    read_day,
    sources,
    tolerate,
    validate_params,
)
from pipeline.data.validate.outputs import (
    QUARANTINE_FILE,
    day_metrics,
    make_readable,
    order_for_headline,
    quarantine,
    write_parquet,
)
from pipeline.data.validate.rules import (
    CATALOG,
    IMPRESSIONS,
    ROW,
    TABLES,
)
from pipeline.data.validate.suites import check_day
from pipeline.data.validate.window import (
    day_drift,
    read_window,
    unique_across_days,
)
from pipeline.params import load_params


def run(data_dir: str | Path, day: str, out_dir: str | Path, params: dict | None = None,
        window_file: str | Path | None = None) -> ValidationOutcome:
    """Validate one day and write the report folder; raises ContractError when a file cannot be read."""
    day = parse_day(day)
    section = validate_params(params)
    out_dir = Path(out_dir)
    try:
        data = read_day(Path(data_dir), day)
    except ContractError as exc:
        with atomic_dir(out_dir) as tmp:
            make_readable(tmp)
            (tmp / "summary.json").write_text(dumps_json({
                "day": day, "success": False, "error": one_line(exc, 2000)}), encoding="utf-8")
        raise

    with atomic_dir(out_dir) as tmp:
        make_readable(tmp)
        checks = check_day(data, day, section, tmp / "data_docs")
        window = read_window(Path(data_dir), day, section, window_file)
        event_id_ok = not any(c.table == IMPRESSIONS and c.level != ROW and c.status == FAILED
                              and "event_id" in c.columns for c in checks)
        checks.append(unique_across_days(data, window, event_id_ok))
        request_id_ok = not any(c.table == IMPRESSIONS and c.level != ROW and c.status == FAILED
                                and "request_id" in c.columns for c in checks)
        checks.append(enough_requests(data, section["min_requests"], request_id_ok))
        frames = {IMPRESSIONS: data.impressions, CATALOG: data.catalog}
        tables = tolerate(checks, frames, float(section["max_bad_fraction"]))
        quarantines = {}
        for table in TABLES:
            quarantines[table] = quarantine(frames[table], [c for c in checks if c.table == table],
                                            data.row_files if table == IMPRESSIONS else None)
            write_parquet(quarantines[table], tmp / QUARANTINE_FILE[table])
        quarantined = len(quarantines[IMPRESSIONS])
        for table, files in data.schemas.items():
            tables[table]["files"] = [name for name, _ in files]
        failures = tuple(c.text() for c in order_for_headline([c for c in checks if c.status == FAILED]))
        warnings = tuple(c.text() for c in order_for_headline([c for c in checks if c.status == WARNING]))
        details = tuple(f"{c.status} " + c.text(examples=section["examples"], percent=True)
                        for c in order_for_headline([c for c in checks if c.status in (FAILED, WARNING)]))
        drift = day_drift(day, data, checks, section, window)
        for status, bucket in ((FAILED, "failures"), (WARNING, "warnings")):
            lines = tuple(f"drift: {c['detail']}" for c in drift["checks"] if c["status"] == status)
            if bucket == "failures":
                failures += lines
            else:
                warnings += lines
            details += tuple(f"{status} {line}" for line in lines)
        success = not failures
        summary = {
            "day": day,
            "success": success,
            "max_bad_fraction": section["max_bad_fraction"],
            "tables": tables,
            "failures": list(failures),
            "warnings": list(warnings),
            "expectations": [c.to_json() for c in checks],
            "drift": drift,
        }
        metrics = day_metrics(data, checks, tables, quarantined)
        (tmp / "summary.json").write_text(dumps_json(summary), encoding="utf-8")
        (tmp / "metrics.json").write_text(dumps_json(metrics), encoding="utf-8")
        validate_report.write(tmp, summary, pd.concat([q for q in quarantines.values() if len(q)] or
                                                      [quarantines[IMPRESSIONS]]), metrics)

    return ValidationOutcome(
        day=day, success=success, failures=failures, warnings=warnings,
        rows=len(data.impressions), catalog_rows=len(data.catalog),
        rules_checked=metrics["rules_checked"], rules_failed=metrics["rules_failed"],
        quarantined_rows=quarantined, report_dir=str(out_dir), details=details,
        sources=sources(Path(data_dir), day, data))


def _day_arg(text: str) -> str:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="folder holding impressions/dt=DAY/ and catalog/dt=DAY/ (DATA_CONTRACT.md)")
    parser.add_argument("--day", required=True, type=_day_arg, help="the day to check, YYYY-MM-DD")
    parser.add_argument("--out", required=True, type=Path, help="report folder, replaced as a whole")
    parser.add_argument("--window", type=Path, default=None,
                        help="window manifest (run/window.json) naming the earlier days the drift checks "
                             "compare with (default: the last validate.drift.window_days days in --data)")
    parser.add_argument("--params", type=Path, default=None,
                        help="params.yaml (default: ./params.yaml when present, else built-in defaults)")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="also write the day's metrics.json here: one path for every day, so "
                             "`dvc metrics diff` compares days (dvc.yaml: work/validate/metrics.json)")


def main(args: argparse.Namespace) -> int:
    params_path = args.params
    if params_path is None and Path("params.yaml").is_file():
        params_path = Path("params.yaml")
    try:
        params = load_params(params_path) if params_path is not None else {}
        validate_params(params)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"validate: {args.day} ERROR {params_path}: {one_line(exc)}", file=sys.stderr)
        return 2

    # GX may log or warn on stderr while it runs; hold that back so the verdict is the first line.
    noise = io.StringIO()
    try:
        with contextlib.redirect_stderr(noise):
            outcome = run(args.data, args.day, args.out, params, args.window)
    except ContractError as exc:
        if args.metrics is not None:  # an unreadable day has no metrics: none from an earlier day either
            args.metrics.unlink(missing_ok=True)
        print(f"validate: {args.day} ERROR {one_line(exc, 2000)}", file=sys.stderr)
        sys.stderr.write(noise.getvalue())
        return 2
    except BaseException:
        sys.stderr.write(noise.getvalue())
        raise

    report = Path(outcome.report_dir)
    if args.metrics is not None:
        write_bytes_atomic(args.metrics, (report / "metrics.json").read_bytes())
    if outcome.success:
        print(outcome.headline())
    else:
        print(outcome.headline(), file=sys.stderr)
    for line in outcome.details:
        print(f"  {one_line(line, 1000)}", file=sys.stderr)
    if outcome.details:
        print(f"  report: {report / 'summary.json'}, {report / 'data_docs' / 'index.html'}, "
              f"{report / QUARANTINE_FILE[IMPRESSIONS]}", file=sys.stderr)
    sys.stderr.write(noise.getvalue())
    return 0 if outcome.success else 1
