"""The estimator benchmark's page: report.html from the result written as benchmark.json.

Tables for detection, retraining and cost, and inline SVG curves (ROC, precision-recall, removal):
no plotting library, no script, nothing fetched, so the page renders offline."""
from __future__ import annotations

import math
from html import escape
from pathlib import Path

from pipeline.importance.benchmark.metrics import TEST_METRICS
from pipeline.reports.html_page import cell, page, table

COLOURS = ("#3056d3", "#c2410c", "#15803d", "#7e22ce", "#0e7490", "#b42318", "#a16207", "#be185d")
GREY, DARK_GREY = "#8a93a3", "#5b6472"
BASELINE_DASH, CHANCE_DASH, CONTROL_DASH, REFERENCE_DASH = "6 3", "2 3", "5 3", "9 3 2 3"

WIDTH, PLOT_H = 420, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 50, 14, 24, 38
LEGEND_ROW = 14


def _cell(value) -> str:
    return "—" if value is None else cell(value)


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# --- charts -------------------------------------------------------------------------------------------

def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def _data_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        low, high = low - (abs(low) * 0.05 or 0.5), high + (abs(high) * 0.05 or 0.5)
    pad = (high - low) * 0.05
    return low - pad, high + pad


def _xy_chart(title: str, x_label: str, y_label: str, lines: list[dict],
              x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None) -> str:
    """Named lines over shared axes, with a legend below the plot.

    Each line: {"name", "points": [(x, y)], "colour", "dash": None or an SVG dash pattern}; points with
    a missing coordinate are left out.
    """
    lines = [{**ln, "points": [(_number(x), _number(y)) for x, y in ln["points"]]} for ln in lines]
    lines = [{**ln, "points": [(x, y) for x, y in ln["points"] if x is not None and y is not None]}
             for ln in lines]
    lines = [ln for ln in lines if ln["points"]]
    height = PAD_TOP + PLOT_H + PAD_BOTTOM + LEGEND_ROW * max(len(lines), 1) + 6
    head = (f'<svg class="chart" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
            f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<text class="chart-title" x="{PAD_LEFT}" y="15">{escape(title)}</text>')
    if not lines:
        return head + f'<text x="{PAD_LEFT}" y="{PAD_TOP + 20}">no data</text></svg>'
    xs = [x for ln in lines for x, _ in ln["points"]]
    ys = [y for ln in lines for _, y in ln["points"]]
    x_low, x_high = x_range or _data_range(xs)
    y_low, y_high = y_range or _data_range(ys)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    bottom = PAD_TOP + PLOT_H

    def px(v: float) -> float:
        return PAD_LEFT + plot_w * (v - x_low) / (x_high - x_low)

    def py(v: float) -> float:
        return PAD_TOP + PLOT_H * (y_high - v) / (y_high - y_low)

    parts = [head, f'<rect class="frame" x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{PLOT_H}"/>']
    for t in _ticks(x_low, x_high):
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{PAD_TOP}" y2="{bottom}" stroke="#eef1f6"/>'
                     f'<text class="axis" x="{px(t):.1f}" y="{bottom + 12}" text-anchor="middle">{_fmt(t)}</text>')
    for t in _ticks(y_low, y_high):
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
                     f'stroke="#eef1f6"/><text class="axis" x="{PAD_LEFT - 4}" y="{py(t) + 3:.1f}" '
                     f'text-anchor="end">{_fmt(t)}</text>')
    parts.append(f'<text class="axis-label" x="{PAD_LEFT + plot_w / 2:.1f}" y="{bottom + 28}" '
                 f'text-anchor="middle">{escape(x_label)}</text>'
                 f'<text class="axis-label" x="12" y="{PAD_TOP + PLOT_H / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {PAD_TOP + PLOT_H / 2:.1f})">{escape(y_label)}</text>')
    for i, ln in enumerate(lines):
        stroke = f'stroke="{ln["colour"]}" stroke-width="1.6" fill="none"' + \
                 (f' stroke-dasharray="{ln["dash"]}"' if ln.get("dash") else "")
        name = escape(ln["name"])
        if len(ln["points"]) == 1:
            (x, y), = ln["points"]
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{ln["colour"]}">'
                         f'<title>{name}</title></circle>')
        else:
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ln["points"])
            parts.append(f'<polyline class="curve" points="{points}" {stroke}><title>{name}</title></polyline>')
        row = bottom + PAD_BOTTOM + LEGEND_ROW * i + 8
        parts.append(f'<line x1="{PAD_LEFT}" x2="{PAD_LEFT + 22}" y1="{row - 3}" y2="{row - 3}" {stroke}/>'
                     f'<text class="legend" x="{PAD_LEFT + 28}" y="{row}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _plotted(result: dict) -> list[tuple[str, dict, str, str | None]]:
    """(name, entry, colour, dash) of the entries that ran: estimators in colour, baselines grey and dashed."""
    out, colour = [], 0
    for name, entry in result["estimators"].items():
        if entry.get("error"):
            continue
        if entry.get("kind") == "baseline":
            out.append((name, entry, GREY, BASELINE_DASH))
        else:
            out.append((name, entry, COLOURS[colour % len(COLOURS)], None))
            colour += 1
    return out


def _detection_chart(result: dict, curve: str, x_key: str, y_key: str, measure: str, chance: dict | None,
                     title: str, x_label: str, y_label: str) -> str:
    """One line per estimator of its detection `curve` (roc or pr), labelled with `measure`, plus chance."""
    lines = []
    for name, entry, colour, dash in _plotted(result):
        points = (entry.get("curves") or {}).get(curve)
        if points:
            value = _number((entry.get("detection") or {}).get(measure))
            label = name + (f" ({measure.upper()} {value:.3f})" if value is not None else "")
            lines.append({"name": label, "points": list(zip(points[x_key], points[y_key])), "colour": colour,
                          "dash": dash})
    if chance:
        lines.append({**chance, "colour": DARK_GREY, "dash": CHANCE_DASH})
    return _xy_chart(title, x_label, y_label, lines, (0.0, 1.0), (0.0, 1.0))


def _roc_chart(result: dict) -> str:
    return _detection_chart(result, "roc", "fpr", "tpr", "auroc", {"name": "chance", "points": [(0.0, 0.0), (1.0, 1.0)]},
                            "ROC: noisy rows found", "false positive rate", "true positive rate")


def _pr_chart(result: dict) -> str:
    # Detection leaves out the log's own noise rows: the chance precision is the share among the rest.
    noise = result.get("noise", {})
    share = _number(noise.get("share_of_measured", noise.get("share")))
    chance = None if share is None else {"name": f"chance (noise share {share:.3g})", "points": [(0.0, share), (1.0, share)]}
    return _detection_chart(result, "pr", "recall", "precision", "auprc", chance,
                            "Precision-recall: noisy rows found", "recall", "precision")


def _removal_chart(result: dict) -> str:
    metric = result.get("primary_metric", "metric")
    lines = []
    for name, entry, colour, dash in _plotted(result):
        removal = entry.get("removal")
        if not removal:
            continue
        fractions = removal["fractions"]
        if entry.get("kind") == "baseline":
            # Removing "lowest" or "highest" of a baseline's scores is the same blind removal: one line.
            lines.append({"name": f"{name}: rows removed", "points": list(zip(fractions, removal["lowest"])),
                          "colour": colour, "dash": dash})
            continue
        lines.append({"name": f"{name}: lowest-scored removed", "points": list(zip(fractions, removal["lowest"])),
                      "colour": colour, "dash": None})
        lines.append({"name": f"{name}: highest-scored removed (control)",
                      "points": list(zip(fractions, removal["highest"])), "colour": colour, "dash": CONTROL_DASH})
    fractions = [f for ln in lines for f, _ in ln["points"] if _number(f) is not None]
    right = max(fractions) if fractions else 1.0
    for ref, dash_pattern in (("clean", CHANCE_DASH), ("unweighted", REFERENCE_DASH)):
        value = _number(result.get("reference", {}).get(ref, {}).get(metric))
        if value is not None and lines:
            lines.append({"name": f"{ref} log (reference)", "points": [(0.0, value), (right, value)],
                          "colour": DARK_GREY, "dash": dash_pattern})
    return _xy_chart(f"Removal: test {metric} after dropping rows", "fraction of training rows removed",
                     f"test {metric}", lines, (0.0, right) if lines else None)


# --- tables -------------------------------------------------------------------------------------------

def _name_cells(name: str, entry: dict) -> list[str]:
    kind = escape(str(entry.get("kind") or "estimator"))
    return [f"<code>{escape(name)}</code>", f"<span class='skipped'>{kind}</span>" if kind == "baseline" else kind]


def _error_cell(entry: dict) -> str:
    return f"<span class='failed'>{escape(str(entry['error']))}</span>" if entry.get("error") else ""


def _detection_table(result: dict) -> str:
    keys = ("auroc", "auprc", "f1_two_means", "recall_at_noise")
    # One more AUROC per noise kind (that kind's rows against the clean rows), when the result has them.
    kinds = sorted({k for e in result["estimators"].values() for k in (e.get("auroc_by_kind") or {})})
    rows = [_name_cells(name, e) + [_cell((e.get("detection") or {}).get(k)) for k in keys]
            + [_cell((e.get("auroc_by_kind") or {}).get(k)) for k in kinds] + [_error_cell(e)]
            for name, e in result["estimators"].items()]
    return table("detection", ["estimator", "kind", "AUROC", "AUPRC", "F1 (two-means)", "recall at |noise|",
                               *[f"AUROC {escape(k)}" for k in kinds], "error"], rows)


def _metrics_of(result: dict) -> tuple[list[str], list[str]]:
    """(the test metrics the result carries, the metrics recovery is measured on); a result from before
    the true-relevance metric has TEST_METRICS and its primary metric."""
    tests = list(result.get("test_metrics") or TEST_METRICS)
    return tests, list(result.get("recovery_metrics") or [result.get("primary_metric", "auc_click")])


def _recoveries(entry: dict, metrics: list[str], primary: str | None) -> list[str]:
    """Recovery and its standard error on each metric (a result without recovery_by_metric has the
    primary metric's alone)."""
    by_metric = entry.get("recovery_by_metric") or {primary: {"recovery": entry.get("recovery"),
                                                              "recovery_se": entry.get("recovery_se")}}
    return [c for m in metrics for c in (_cell((by_metric.get(m) or {}).get("recovery")),
                                         _cell((by_metric.get(m) or {}).get("recovery_se")))]


def _retrain_table(result: dict) -> str:
    reference, oracle = result.get("reference", {}), result.get("oracle") or {}
    tests, recovered = _metrics_of(result)
    primary = result.get("primary_metric")
    none = ["—", ""] * len(recovered)
    rows = [[f"<code>{escape(ref)}</code>", "reference", "weight 0 on the injected rows" if ref == "oracle" else ""]
            + [_cell(reference[ref].get(m)) for m in tests]
            + (_recoveries(oracle, recovered, primary) if ref == "oracle" else none)
            + ["", ""] for ref in ("clean", "unweighted", "oracle") if ref in reference]
    rows += [[f"<code>{escape(name)}</code>", "trivial ranker", "no training: the test rows ordered by "
              + ("a seeded random score" if name == "random" else escape(name.replace("_", " ")))]
             + [_cell(values.get(m)) for m in tests] + none + ["", ""]
             for name, values in (result.get("trivial_rankers") or {}).items()]
    rows += [_name_cells(name, e) + [_cell(e.get("transform"))] + [_cell((e.get("test") or {}).get(m)) for m in tests]
             + _recoveries(e, recovered, primary) + [_by_transform_cell(e), _error_cell(e)]
             for name, e in result["estimators"].items()]
    seeds = escape(str(result.get("train_seeds", "?")))
    recovery_heads = [h for m in recovered
                      for h in (f"recovery on {escape(m)}" + (" (primary)" if m == primary else ""),
                                f"± standard error ({seeds} paired seeds)")]
    return table("retrain", ["training log", "kind", "weight transform", *map(escape, tests), *recovery_heads,
                             f"recovery on {escape(str(primary))} by transform", "error"], rows)


def _metric_line(result: dict) -> str:
    """The primary metric (and why, when it is the fallback), and what the noise cost on each recovery metric."""
    primary = escape(str(result.get("primary_metric")))
    note = result.get("primary_metric_note")
    costs = result.get("noise_cost") or {}
    parts = []
    for metric, cost in costs.items():
        if cost.get("note"):
            parts.append(f"on <code>{escape(metric)}</code> recovery is undefined: {escape(str(cost['note']))}")
        else:
            se = f" ± {_cell(cost['cost_se'])}" if cost.get("cost_se") is not None else ""
            parts.append(f"on <code>{escape(metric)}</code> the noise costs the unweighted ranker "
                         f"{_cell(cost.get('cost'))}{se} (clean {_cell(cost.get('clean'))}, unweighted "
                         f"{_cell(cost.get('unweighted'))})")
    return (f"<p id='metric'>Primary metric: <code>{primary}</code>"
            + (f" ({escape(str(note))})" if note else "") + ". Recovery = (weighted − unweighted) / (clean − "
            "unweighted), on each metric; undefined when the clean ranker is not better than the unweighted one "
            "by benchmark.min_recovery_gap, or by benchmark.min_cost_se standard errors over the paired seeds."
            + (" By metric: " + "; ".join(parts) + "." if parts else "") + "</p>")


def _by_transform_cell(entry: dict) -> str:
    return escape(", ".join(f"{name} {_cell(value)}" for name, value in (entry.get("recovery_by_transform") or {}).items()))


def _cost_table(result: dict) -> str:
    epoch = _number(result.get("epoch_seconds"))
    budget = _number(((result.get("selection") or {}).get("rule") or {}).get("max_cost_ratio"))
    rows = []
    for name, e in result["estimators"].items():
        seconds = _number(e.get("seconds"))
        ratio = _number(e.get("cost_ratio"))
        if ratio is None and seconds is not None and epoch:
            ratio = seconds / epoch
        within = None if ratio is None or budget is None else ("yes" if ratio <= budget else "no")
        rows.append(_name_cells(name, e) + [_cell(seconds), _cell(ratio), _cell(e.get("cost_class")),
                                            _cell(within), _error_cell(e)])
    return table("cost", ["estimator", "kind", "seconds", "cost ratio (seconds / epoch)", "cost class",
                          f"within {_cell(budget)} epochs", "error"], rows)


# --- page ---------------------------------------------------------------------------------------------

def _log_line(result: dict) -> str:
    log, noise = result.get("log", {}), result.get("noise", {})
    days = log.get("days") or []
    spec = ", ".join(f"{k}={v}" for k, v in (noise.get("spec") or {}).items()) or "none"
    by_kind = ", ".join(f"{k} {v}" for k, v in (noise.get("by_kind") or {}).items()) or "none"
    share = _number(noise.get("share"))
    return (f"<p id='log'>Log: <code>{escape(str(log.get('data')))}</code>, {len(days)} day(s) "
            f"({escape(', '.join(map(str, days)))}), {_cell(log.get('rows'))} rows: "
            f"{_cell(log.get('train_rows'))} train, {_cell(log.get('test_rows'))} test. "
            f"Noise injected: {escape(spec)} (seed {_cell(noise.get('seed'))}); "
            f"{_cell(noise.get('noisy_rows'))} noisy rows"
            + (f" ({share:.1%})" if share is not None else "") + f" by kind: {escape(by_kind)}."
            + (f" {_cell(noise.get('log_noise_rows_not_measured'))} rows the log itself marks as noise are left "
               "out of detection (neither injected nor clean)." if noise.get("log_noise_rows_not_measured") else "")
            + "</p>")


def _selection_line(result: dict) -> str:
    selection = result.get("selection") or {}
    reason = escape(str(selection.get("reason") or "no reason given"))
    if not selection.get("estimator"):
        return f"<p id='selection'>No estimator was chosen: {reason}</p>"
    transform = ", ".join(f"{k}={v}" for k, v in (selection.get("transform") or {}).items())
    return (f"<p id='selection'>Chosen: <code>{escape(str(selection['estimator']))}</code>"
            + (f" (weights: {escape(transform)})" if transform else "") + f". {reason}</p>")


def render(result: dict) -> str:
    epoch = _number(result.get("epoch_seconds"))
    body = ["<h1>Estimator benchmark</h1>", _log_line(result),
            "<h2>Selection</h2>", _selection_line(result),
            "<h2>Detection</h2><p>How well each estimator's low scores find the injected noisy rows.</p>",
            _detection_table(result),
            "<h2>Retrain on the noisy log</h2><p>Test metrics of the model trained on the clean log, on the "
            "noisy log unweighted, and on the noisy log weighted by each estimator with its best weight transform "
            f"(the best on the primary metric), each averaged over {_cell(result.get('train_seeds'))} training "
            "seeds. The click metrics read pCTR at the logged position; the NDCGs order each test request by the "
            "position-free ranking score (ndcg_at_K_true: gain = the simulator's true relevance). The oracle "
            "weighs the injected rows 0 and the others 1: its recovery is what weights alone could reach on this "
            "log. The trivial rankers are not trained: they show what ordering by nothing gets.</p>",
            _metric_line(result), _retrain_table(result),
            "<h2>Cost</h2>",
            f"<p>One training epoch took {_cell(epoch)} s.</p>", _cost_table(result),
            "<h2>Curves</h2><div class='charts' id='charts'>",
            _roc_chart(result), _pr_chart(result), _removal_chart(result), "</div>"]
    return page("sieve estimator benchmark", body)


def write(out_dir: Path, result: dict) -> Path:
    """Write out_dir/report.html from the benchmark result (the dict written as benchmark.json); return its path."""
    path = Path(out_dir) / "report.html"
    path.write_text(render(result), encoding="utf-8")
    return path
