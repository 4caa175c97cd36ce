"""The reviewers' page for one validated day: report.html, and the same facts as report.json."""
from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from pipeline.atomic import dumps_json
from pipeline.reports.html_page import cell as _cell
from pipeline.reports.html_page import page
from pipeline.reports.html_page import table as _table
from pipeline.reports.svg_chart import line_chart

EXAMPLE_COLUMNS = ("event_id", "item_id", "request_id", "position", "clicked", "purchased", "ts", "query")
EXAMPLES_PER_RULE = 3

def quarantine_summary(quarantine: pd.DataFrame) -> list[dict]:
    """Per rule: how many rows broke it and a few of them."""
    if quarantine.empty:
        return []
    shown = [c for c in EXAMPLE_COLUMNS if c in quarantine.columns]
    out = []
    for rule, rows in quarantine.groupby("rule", sort=True):
        examples = rows[shown].head(EXAMPLES_PER_RULE).astype(object).where(rows[shown].notna(), None)
        out.append({"rule": rule, "rows": int(len(rows)),
                    "examples": [{k: (str(v) if v is not None else None) for k, v in r.items()}
                                 for r in examples.to_dict("records")]})
    return out


def verdict(summary: dict) -> str:
    if not summary["success"]:
        return "failed"
    return "warning" if summary.get("warnings") else "passed"


def facts(summary: dict, quarantine: pd.DataFrame, metrics: dict) -> dict:
    drift = summary.get("drift") or {}
    return {
        "day": summary["day"],
        "verdict": verdict(summary),
        "success": summary["success"],
        "counts": metrics,
        "failures": summary.get("failures", []),
        "warnings": summary.get("warnings", []),
        "rules": [{k: e.get(k) for k in ("table", "rule", "columns", "status", "unexpected_count", "examples")}
                  for e in summary.get("expectations", [])],
        "quarantine": quarantine_summary(quarantine),
        "drift": {"days": drift.get("days", []), "skipped": drift.get("skipped"),
                  "checks": drift.get("checks", [])},
        "links": {"data_docs": "data_docs/index.html", "summary": "summary.json",
                  "quarantine": "quarantine.parquet"},
    }


def chart_for(check: dict) -> str:
    lines = []
    for level in ("warn", "fail"):
        for bound in (check.get("bands") or {}).get(level, []):
            if bound is not None:
                lines.append((f"{level} threshold", bound, level))
    points = [(p["day"], p["value"]) for p in check["series"]]
    return line_chart(check["statistic"], points, lines, status=check["status"])


def _rule_row(r: dict) -> list[str]:
    return [_cell(r["table"]), f"<code>{escape(r['rule'])}</code>",
            f"<span class='{r['status']}'>{r['status']}</span>", _cell(r["unexpected_count"]),
            _cell(", ".join(r["examples"] or []))]


def render(report: dict) -> str:
    v = report["verdict"]
    counts = report["counts"]
    parts = [f"<h1>Data quality for {escape(report['day'])} <span class='verdict {v}' id='verdict'>{v.upper()}</span></h1>",
             f"<p>{counts.get('rows')} impressions, {counts.get('catalog_rows')} catalog items; "
             f"{counts.get('rules_checked')} contract rules checked, {counts.get('rules_failed')} failed or warned, "
             f"{counts.get('quarantined_rows')} rows quarantined. "
             f"<a href='{report['links']['data_docs']}'>Great Expectations Data Docs</a> · "
             f"<a href='report.json'>report.json</a> · <a href='{report['links']['summary']}'>summary.json</a></p>"]
    if report["failures"] or report["warnings"]:
        items = [f"<li class='failed'>{escape(f)}</li>" for f in report["failures"]]
        items += [f"<li class='warning'>{escape(w)}</li>" for w in report["warnings"]]
        parts.append(f"<h2>What needs attention</h2><ul id='attention'>{''.join(items)}</ul>")
    drift = report["drift"]
    parts.append("<h2>Statistics against the earlier days</h2>")
    if drift["skipped"]:
        parts.append(f"<p>Not computed: {escape(drift['skipped'])}.</p>")
    else:
        parts.append(f"<p>Compared with {len(drift['days'])} earlier day(s): "
                     f"{escape(', '.join(drift['days'])) or 'none'}.</p>")
        parts.append(_table("drift", ["statistic", "value", "mean of earlier days", "change", "warn at",
                                      "fail at", "status"], [
            [f"<code>{escape(c['statistic'])}</code>", _cell(c["value"]), _cell(c["baseline"]),
             _cell(c["change"]) + (" (" + c["change_kind"] + ")" if c["change"] is not None else ""),
             _cell(c["warn"]), _cell(c["fail"]), f"<span class='{c['status']}'>{c['status']}</span>"]
            for c in drift["checks"]]))
        parts.append("<div class='charts' id='charts'>" + "".join(chart_for(c) for c in drift["checks"]) + "</div>")
    parts.append("<h2>Quarantined rows by rule</h2>")
    if report["quarantine"]:
        parts.append(_table("quarantine", ["rule", "rows", "examples"], [
            [f"<code>{escape(q['rule'])}</code>", _cell(q["rows"]),
             "<br>".join(escape(", ".join(f"{k}={v}" for k, v in ex.items() if v is not None))
                         for ex in q["examples"])] for q in report["quarantine"]]))
    else:
        parts.append("<p id='quarantine'>No row broke a row-level rule.</p>")
    parts.append("<h2>Contract rules</h2>")
    flagged = [r for r in report["rules"] if r["status"] not in ("passed",)]
    passed = [r for r in report["rules"] if r["status"] == "passed"]
    headers = ["table", "rule", "status", "unexpected rows", "examples"]
    if flagged:
        parts.append(_table("rules", headers, [_rule_row(r) for r in flagged]))
    else:
        parts.append(f"<p id='rules'>All {len(passed)} rules passed.</p>")
    parts.append(f"<details><summary>{len(passed)} rules passed</summary>"
                 + _table("passed-rules", headers, [_rule_row(r) for r in passed]) + "</details>")
    return page(f"sieve data quality {report['day']}", parts)


def write(folder: Path, summary: dict, quarantine: pd.DataFrame, metrics: dict) -> dict:
    report = facts(summary, quarantine, metrics)
    (folder / "report.json").write_text(dumps_json(report), encoding="utf-8")
    (folder / "report.html").write_text(render(report), encoding="utf-8")
    return report
