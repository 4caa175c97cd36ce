"""What the validate stage writes beside summary.json: the quarantine (every row a row-level rule failed
or let through, with the rule and the file it came from) and the Parquet writer that keeps mixed-type
columns readable, the day's metrics.json, the order failures are listed in on the headline, and the
permissions that let others read a report folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.validate.checks import (
    FAILED,
    PASSED,
    SKIPPED,
    WARNING,
    Check,
    DayData,
)
from pipeline.data.validate.rules import (
    CATALOG,
    IMPRESSIONS,
    ROW,
    TABLES,
)

QUARANTINE_FILE = {IMPRESSIONS: "quarantine.parquet", CATALOG: "quarantine_catalog.parquet"}


def quarantine(frame: pd.DataFrame, checks: list[Check], row_files: np.ndarray | None) -> pd.DataFrame:
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


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
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


def day_metrics(data: DayData, checks: list[Check], tables: dict, quarantined: int) -> dict:
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


def order_for_headline(checks: list[Check]) -> list[Check]:
    """Per table, shape failures (type, missing column) before row-level ones, each in rule order."""
    return sorted(checks, key=lambda c: (TABLES.index(c.table), c.level == ROW))


def make_readable(folder: Path) -> None:
    # mkdtemp makes the folder private (0700); a report is meant to be read by others.
    folder.chmod(0o755)
