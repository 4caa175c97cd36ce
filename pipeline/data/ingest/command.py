"""The ingest stage: bring a user's own logs (Parquet or CSV) into the data contract's layout.

`python -m pipeline ingest --impressions FILE_OR_GLOB [...] --catalog FILE [--mapping mapping.yaml]
--out data/raw [--params params.yaml]`

Reads the impressions (one file, several, or a glob; .parquet/.pq or .csv/.csv.gz with a UTF-8 header) and
one catalog file, renames columns as the mapping says, casts them to the contract's Arrow types and writes
OUT/impressions/dt=DAY/part-NNNNN.parquet plus OUT/catalog/dt=DAY/catalog.parquet for every UTC day the
impressions touch. A day folder is replaced whole, never appended to. Input is streamed in chunks of
`ingest.chunk_rows` rows, so memory does not grow with the input.

Rows that cannot be cast (a ts that does not parse, a position that is not a number, clicked not 0/1, ...)
go to OUT/_quarantine/ingest/<input file name>.parquet with every original column as text plus `reason`,
`source_file` and `source_row` (1 = the first data row). Contract rules (unique ids, positions >= 1,
items in the catalog, ...) are the validate stage's job, not this one's.

The mapping file (all keys optional):

    columns: {their_name: contract_name}     # impressions; a target starting with f_ keeps a feature
    catalog_columns: {their_name: contract_name}
    features: [device, tenure]               # extra columns kept as f_device, f_tenure; or a
                                             # {name: int|float|string} mapping to fix their types
    ts_format: "%Y-%m-%d %H:%M:%S"          # strptime format of ts text (default ISO 8601)
    ts_unit: ms                              # ts holds epoch numbers in s, ms, us or ns
    ts_timezone: Europe/Berlin               # zone of times without an offset (default UTC); times
                                             # with an offset keep it; wall-clock times a DST change
                                             # skips or repeats are quarantined
    set: {contract_name: constant or rule}   # columns the log lacks: constants, ids derived from the
    catalog_set: {contract_name: ...}        # row (hash, row, session), text from fields (template,
                                             # join), copy; see pipeline/data/ingest/sets.py

Impression columns other than the contract's, f_* columns and listed features are dropped, with a note.
Contract columns that may be null (query, propensity, price; category, brand, price in the catalog) are
filled with nulls when absent; any other column neither in the input nor under set: is an error, and
every such column of every input is named in one message.

Exit 0: done. Exit 2: an input cannot be read at all (missing, not Parquet, not UTF-8, a required column
missing after mapping, a column of a type that cannot hold its contract type) or the mapping is invalid;
one line on stderr names the file and the problem, and nothing is written.

This module runs the steps in order; each lives beside it in pipeline/data/ingest/: mapping (params and
the mapping file), reading, planning, casting and converting (columns, then chunks), writing, and sets
(the set: rules).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.atomic import atomic_dir
from pipeline.data.contract import IMPRESSION_SCHEMA, ContractError, DayPaths
from pipeline.data.ingest.columns import CATALOG, IMPRESSIONS, Log, Mapping
from pipeline.data.ingest.converting import assign_sessions, convert_chunk
from pipeline.data.ingest.mapping import ingest_params, load_mapping
from pipeline.data.ingest.planning import FilePlan, TableSpec, plan_tables
from pipeline.data.ingest.reading import chunks, expand_inputs, one_line, open_source
from pipeline.data.ingest.writing import DayParts, QuarantineWriter, quarantine_names, remove_dead_staging
from pipeline.params import load_params


def _stream(plan: FilePlan, spec: TableSpec, mapping: Mapping, section: dict, quarantine: QuarantineWriter,
            sink: Callable[[pa.Table], None]) -> tuple[int, Counter]:
    rows_read = 0
    reasons: Counter = Counter()
    for chunk in chunks(plan.source, section["chunk_rows"], section["csv_block_bytes"]):
        converted = convert_chunk(chunk, plan, spec, mapping, rows_read)
        rows_read += chunk.num_rows
        reasons.update(converted.reasons)
        if converted.quarantine is not None:
            quarantine.write(converted.quarantine)
        if converted.good.num_rows:
            sink(converted.good)
    quarantine.close()
    return rows_read, reasons


def _some(names: list[str], shown: int = 8) -> str:
    listed = ", ".join(n or "''" for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def run(impressions: list[str] | str, catalog: str, out: str | Path, params: dict | None = None,
        mapping: Mapping | str | Path | None = None, log: Log | None = None) -> dict:
    """Ingest impressions and a catalog into `out`; the days they touch are replaced whole.

    Raises ContractError, with nothing written, when an input cannot be read."""
    log = log or (lambda line: None)
    section = ingest_params(params)
    mapping = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    files = expand_inputs([impressions] if isinstance(impressions, str) else list(impressions))
    sources = [open_source(p, section["csv_block_bytes"]) for p in files]
    cat_source = open_source(str(catalog), section["csv_block_bytes"])
    plans, cat_plan, spec, cat_spec = plan_tables(sources, cat_source, mapping, section, log)
    assign_sessions(plans, spec, mapping, section, log)
    for plan in plans + [cat_plan]:
        read_by_rules = {name for rule in plan.rules for name in rule.references()}
        dropped = [c for c in plan.dropped if c not in read_by_rules]
        if dropped:
            log(f"ingest: {plan.source.path}: dropping column(s) {_some(dropped)} "
                f"(not in the contract, not f_*, not listed under features)")
        if plan.filled:
            log(f"ingest: {plan.source.path}: no column for {', '.join(plan.filled)}; filled with nulls")
    for table, table_sources in ((IMPRESSIONS, sources), (CATALOG, [cat_source])):
        unused = [c for c in mapping.renames(table) if not any(c in s.schema.names for s in table_sources)]
        if unused:
            log(f"ingest: the mapping names {table} column(s) {', '.join(unused)}, which no input has")
    for name in spec.schema.names[len(IMPRESSION_SCHEMA):]:
        lacking = [p.source.path for p in plans if name not in p.take]
        if lacking:
            log(f"ingest: feature {name} is absent from {', '.join(lacking)}; filled with nulls there")

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(out)
    staging = out / f".ingest-staging-{os.getpid()}"
    q_names = quarantine_names([p.source.path for p in plans] + [cat_plan.source.path])
    summary: dict = {"files": [], "rows_read": 0, "rows_written": {}, "rows_quarantined": 0,
                     "quarantine_reasons": {}, "days": [], "parts": {},
                     "features": {n: str(spec.schema.field(n).type)
                                  for n in spec.schema.names[len(IMPRESSION_SCHEMA):]}}
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed run that had this pid
        staging.mkdir()
        reasons_all: Counter = Counter()
        quarantines: list[tuple[QuarantineWriter, str]] = []
        # The catalog first: it is the smaller file, so a broken one fails the run early.
        cat_file = staging / "catalog.parquet"
        cat_writer = pq.ParquetWriter(cat_file, cat_spec.schema)
        cat_quarantine = QuarantineWriter(staging / "quarantine" / q_names[cat_plan.source.path])
        cat_rows, cat_reasons = _stream(cat_plan, cat_spec, mapping, section, cat_quarantine, cat_writer.write_table)
        cat_writer.close()
        quarantines.append((cat_quarantine, q_names[cat_plan.source.path]))
        reasons_all.update(cat_reasons)
        summary["catalog"] = {"path": cat_plan.source.path, "rows_read": cat_rows,
                              "rows_written": cat_rows - cat_quarantine.rows,
                              "rows_quarantined": cat_quarantine.rows, "dropped_columns": cat_plan.dropped}
        log(f"ingest: {cat_plan.source.path}: {cat_rows} catalog rows read, {cat_quarantine.rows} quarantined")

        days = DayParts(staging / "impressions", section["chunk_rows"])
        for plan in plans:
            writer = QuarantineWriter(staging / "quarantine" / q_names[plan.source.path])
            rows, reasons = _stream(plan, spec, mapping, section, writer, days.add)
            quarantines.append((writer, q_names[plan.source.path]))
            reasons_all.update(reasons)
            summary["files"].append({"path": plan.source.path, "rows_read": rows,
                                     "rows_quarantined": writer.rows, "dropped_columns": plan.dropped})
            summary["rows_read"] += rows
            summary["rows_quarantined"] += writer.rows
            log(f"ingest: {plan.source.path}: {rows} rows read, {writer.rows} quarantined")
        days.close()

        # Every input was read in full: only now does anything in `out` change.
        for day in sorted(days.written):
            paths = DayPaths(out, day)
            with atomic_dir(paths.catalog_file.parent) as tmp:
                shutil.copyfile(cat_file, tmp / paths.catalog_file.name)
            replaced = paths.impressions_dir.exists()
            with atomic_dir(paths.impressions_dir) as tmp:
                for part in sorted((staging / "impressions" / f"dt={day}").iterdir()):
                    os.replace(part, tmp / part.name)
            summary["days"].append(day)
            summary["rows_written"][day] = days.written[day]
            summary["parts"][day] = days.parts[day]
            log(f"ingest: {day}: {days.written[day]} rows in {days.parts[day]} part(s) -> {paths.impressions_dir}"
                + (" (replaced the previous folder)" if replaced else ""))
        q_dir = out / "_quarantine" / "ingest"
        for writer, name in quarantines:
            if writer.rows:
                q_dir.mkdir(parents=True, exist_ok=True)
                os.replace(writer.path, q_dir / name)
            else:
                (q_dir / name).unlink(missing_ok=True)  # a stale list from an earlier run of this file
        summary["quarantine_files"] = [str(q_dir / name) for writer, name in quarantines if writer.rows]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)

    summary["quarantine_reasons"] = dict(sorted(reasons_all.items()))
    total_q = summary["rows_quarantined"] + summary["catalog"]["rows_quarantined"]
    log(f"ingest: {summary['rows_read']} impression rows read, {sum(summary['rows_written'].values())} written "
        f"over {len(summary['days'])} day(s), {summary['rows_quarantined']} quarantined; catalog "
        f"{summary['catalog']['rows_written']} items written, {summary['catalog']['rows_quarantined']} quarantined")
    if total_q:
        log(f"ingest: quarantined rows by reason (a row can have several) -> {out / '_quarantine' / 'ingest'}")
        for reason, count in summary["quarantine_reasons"].items():
            log(f"  {reason}: {count}")
    if summary["rows_read"] and not summary["days"]:
        log("ingest: WARNING every impression row was quarantined; no day was written (check the mapping)")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impressions", required=True, nargs="+", metavar="FILE_OR_GLOB",
                        help="impressions: .parquet/.pq or .csv/.csv.gz files, or glob patterns (quoted)")
    parser.add_argument("--catalog", required=True, help="the item catalog file (.parquet/.pq or .csv/.csv.gz)")
    parser.add_argument("--mapping", type=Path, default=None,
                        help="YAML: column renames, ts format/unit/time zone, extra feature columns")
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output root (default data/raw)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (ingest section)")


def main(args: argparse.Namespace) -> int:
    try:
        params = load_params(args.params)
        ingest_params(params)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"ingest: ERROR {args.params}: {one_line(exc)}", file=sys.stderr)
        return 2
    try:
        run(args.impressions, args.catalog, args.out, params, args.mapping, log=print)
    except ContractError as exc:
        print(f"ingest: ERROR {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    return 0
