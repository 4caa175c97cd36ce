"""The importance report's event lookup: what drove the weight of one impression, by its event_id.

The page holds the rows as JSON (the lowest weights first, at most `importance.report.lookup_rows`,
so a large log's report stays small) and a few lines of script that show one row on request or from
the page's address (report.html#event=<event_id>). Every row is in scores.parquet either way."""
from __future__ import annotations

import json
from html import escape

import numpy as np
import pandas as pd

SHOWN = ("weight", "score", "reason", "split", "surface", "position", "clicked", "purchased", "item_id", "query")

SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('lookup-data').textContent);
  var out = document.getElementById('lookup-result');
  function show(id) {
    out.textContent = '';
    var row = data.rows[id];
    if (!row) {
      var p = document.createElement('p');
      p.id = 'lookup-missing';
      p.textContent = id + ': not among the ' + data.held + ' rows this page holds (scores.parquet has every row).';
      out.appendChild(p);
      return;
    }
    var table = document.createElement('table');
    table.id = 'lookup-row';
    function line(name, value) {
      var tr = table.insertRow(), th = document.createElement('th');
      th.textContent = name; tr.appendChild(th); tr.insertCell().textContent = value;
    }
    line('event_id', id);
    data.columns.forEach(function (name, i) { line(name, row[i] === null ? '' : String(row[i])); });
    data.evidence.forEach(function (name, i) {
      var value = row[data.columns.length + 2 * i], pct = row[data.columns.length + 2 * i + 1];
      line(name, value + ' (at or above ' + pct + '% of rows)');
    });
    out.appendChild(table);
  }
  document.getElementById('lookup-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var id = document.getElementById('lookup-id').value.trim();
    location.hash = 'event=' + encodeURIComponent(id);
    show(id);
  });
  if (location.hash.indexOf('#event=') === 0) show(decodeURIComponent(location.hash.slice(7)));
})();
"""


def _plain(value):
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (np.floating, float)):
        return float(f"{float(value):.6g}")
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    return str(value) if not isinstance(value, (int, str)) else value


def lookup_data(frame: pd.DataFrame, evidence: list[str], max_rows: int) -> dict:
    """{columns, evidence, held, total, rows: {event_id: [shown values..., evidence value, percentile, ...]}}.
    Percentiles are over every row of the log, not only the rows held."""
    percentiles = {c: np.floor(frame[c].rank(pct=True, method="max").to_numpy() * 100 - 1e-9).clip(0, 100)
                   for c in evidence}
    held = (np.argsort(frame["weight"].to_numpy(), kind="stable")[:max_rows] if len(frame) > max_rows
            else np.arange(len(frame)))
    columns = [c for c in SHOWN if c in frame.columns]
    shown = frame.iloc[held][["event_id", *columns, *evidence]].itertuples(index=False, name=None)
    rows = {}
    for at, row in zip(held, shown):
        values = [_plain(v) for v in row[1:1 + len(columns)]]
        for i, name in enumerate(evidence):
            values += [_plain(row[1 + len(columns) + i]), int(percentiles[name][at])]
        rows[str(row[0])] = values
    return {"columns": columns, "evidence": [c.removeprefix("evidence_") for c in evidence],
            "held": len(rows), "total": int(len(frame)), "rows": rows}


def section(frame: pd.DataFrame, evidence: list[str], max_rows: int) -> list[str]:
    data = lookup_data(frame, evidence, max_rows)
    scope = ("every row of the log" if data["held"] == data["total"] else
             f"the {data['held']} lowest-weighted of {data['total']} rows (importance.report.lookup_rows)")
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return ["<h2>Look up an impression</h2>",
            f"<p>What drove one impression's weight: its reason, and each piece of evidence with the share of "
            f"rows below it. This page holds {escape(scope)}; link to one as report.html#event=&lt;event_id&gt;.</p>",
            "<form id='lookup-form'><input id='lookup-id' size='40' placeholder='event_id'> "
            "<button type='submit'>Look up</button></form><div id='lookup-result'></div>",
            f"<script type='application/json' id='lookup-data'>{payload}</script>",
            f"<script>{SCRIPT}</script>"]
