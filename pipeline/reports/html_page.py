"""Shared pieces of the HTML reports: one stylesheet, tables and cells."""
from __future__ import annotations

from html import escape

import pandas as pd

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1d2430;max-width:1200px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{border:1px solid #dde;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f5f9} .verdict{padding:2px 8px;border-radius:4px;color:#fff;font-size:15px}
.passed{color:#17703a} .warning{color:#9a6700} .failed{color:#b42318} .skipped{color:#667}
.verdict.passed{background:#17703a;color:#fff} .verdict.warning{background:#9a6700;color:#fff} .verdict.failed{background:#b42318;color:#fff}
.charts{display:flex;flex-wrap:wrap;gap:12px} .chart{border:1px solid #eef;background:#fff}
.chart .frame{fill:#fbfcfe;stroke:#dde} .chart .series{fill:none;stroke:#3056d3;stroke-width:1.6}
.chart .bar{fill:#3056d3}
.chart .point{fill:#3056d3} .chart .point.today.failed{fill:#b42318} .chart .point.today.warning{fill:#9a6700}
.chart .point.today.passed{fill:#17703a} .chart .threshold{stroke-dasharray:4 3;stroke-width:1}
.chart .threshold.warn{stroke:#d4a017} .chart .threshold.fail{stroke:#b42318}
.chart text{font-size:10px;fill:#556} .chart .chart-title{font-size:11px;fill:#1d2430;font-weight:600}
code{font-size:12px}
"""


def cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def table(table_id: str, headers: list[str], rows: list[list[str]]) -> str:
    """Cells must already be HTML (use `cell` for plain values)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n")
