"""The benchmark page: three tables naming every estimator and baseline, the selection's reason, a failed
estimator's error, three inline charts that headless Chromium parses, and escaped strings."""
import re
import shutil
import subprocess

import numpy as np

from pipeline.importance.benchmark import report as benchmark_report

METRICS = ("auc_click", "logloss_click", "ndcg_at_10")


def curves(strength: float) -> dict:
    """A monotone ROC and a matching precision-recall curve; strength 1 is chance, larger is better."""
    fpr = np.linspace(0.0, 1.0, 50)
    tpr = fpr ** (1.0 / strength)
    recall = np.linspace(0.01, 1.0, 50)
    precision = 0.13 + (1 - 0.13) * (1 - recall ** strength) * (strength > 1)
    return {"roc": {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()},
            "pr": {"recall": recall.round(4).tolist(), "precision": precision.round(4).tolist()}}


def entry(kind, cost_class, seconds, strength, auc, recovery, removal=True) -> dict:
    fractions = [0.05, 0.1, 0.2, 0.3, 0.5]
    return {"kind": kind, "cost_class": cost_class, "seconds": seconds, "cost_ratio": round(seconds / 1.9, 4),
            "detection": {"auroc": 0.5 + 0.4 * (1 - 1 / strength), "auprc": 0.13 + 0.4 * (1 - 1 / strength),
                          "f1_two_means": 0.55, "recall_at_noise": 0.58},
            "curves": curves(strength),
            "test": {"auc_click": auc, "logloss_click": 0.305, "ndcg_at_10": 0.40},
            "recovery": recovery, "recovery_se": 0.0427,
            "removal": {"fractions": fractions, "lowest": [auc + 0.002 * i for i in range(5)],
                        "highest": [auc - 0.01 * i for i in range(4)] + [None]} if removal else None,
            "error": None}


def result(error: str = "ValueError: scores are all NaN", selected: str | None = "oof_loss") -> dict:
    return {
        "log": {"data": "data/raw", "days": ["2026-11-01"], "rows": 3000, "train_rows": 2400, "test_rows": 600},
        "noise": {"spec": {"false_click": 0.2, "bot_sessions": 0.05}, "seed": 123, "noisy_rows": 310,
                  "share": 0.13, "by_kind": {"false_click": 60, "bot_sessions": 250}},
        "primary_metric": "auc_click",
        "epoch_seconds": 1.9,
        "reference": {"clean": {"auc_click": 0.71, "logloss_click": 0.30, "ndcg_at_10": 0.41},
                      "unweighted": {"auc_click": 0.69, "logloss_click": 0.31, "ndcg_at_10": 0.39},
                      "oracle": {"auc_click": 0.7031, "logloss_click": 0.303, "ndcg_at_10": 0.40}},
        "oracle": {"recovery": 0.655, "recovery_se": 0.0813},
        "estimators": {
            "oof_loss": entry("estimator", "retraining", 5.2, 4.0, 0.70, 0.5),
            "grad_norm": entry("estimator", "forward-only", 30.0, 2.0, 0.695, 0.25),
            "uniform": {"kind": "baseline", "cost_class": None, "seconds": 0.0, "cost_ratio": 0.0,
                        "detection": {"auroc": 0.5, "auprc": None, "f1_two_means": None, "recall_at_noise": None},
                        "curves": None, "test": {"auc_click": 0.69, "logloss_click": 0.31, "ndcg_at_10": 0.39},
                        "recovery": 0.0, "removal": None, "error": None},
            "random": entry("baseline", None, 0.01, 1.0, 0.688, -0.1),
            "broken_one": {"kind": "estimator", "cost_class": "forward-only", "error": error},
        },
        "selection": {"estimator": selected, "transform": {"temperature": 1.0, "clip": [0.1, 3.0]},
                      "reason": "oof_loss: highest recovery (0.50) among the 2 estimators within the cost "
                                "budget (grad_norm over budget)",
                      "rule": {"max_cost_ratio": 10.0, "tie_tolerance": 0.02}},
    }


def section(html: str, table_id: str) -> str:
    start = html.index(f'<table id="{table_id}">')
    return html[start:html.index("</table>", start)]


def test_report_has_tables_selection_error_and_charts(tmp_path):
    res = result()
    path = benchmark_report.write(tmp_path, res)
    assert path == tmp_path / "report.html"
    html = path.read_text(encoding="utf-8")
    for table_id in ("detection", "retrain", "cost"):
        rows = section(html, table_id)
        for name in res["estimators"]:
            assert f"<code>{name}</code>" in rows, (table_id, name)
        assert rows.count("<span class='skipped'>baseline</span>") == 2
    assert "<code>clean</code>" in section(html, "retrain") and "<code>unweighted</code>" in section(html, "retrain")
    oracle_row = section(html, "retrain").split("<code>oracle</code>")[1].split("</tr>")[0]
    assert "0.7031" in oracle_row and "0.655" in oracle_row and "0.0813" in oracle_row
    assert section(html, "retrain").count("0.0427") == 3          # each recovery's standard error beside it
    # order of the page: log line, selection, detection, retrain, cost, charts
    marks = ["id='log'", "id='selection'", 'id="detection"', 'id="retrain"', 'id="cost"', "id='charts'"]
    assert [html.index(m) for m in marks] == sorted(html.index(m) for m in marks)
    assert res["selection"]["reason"] in html
    assert "ValueError: scores are all NaN" in html
    assert "3000 rows" in html and "false_click 60" in html
    assert "—" in section(html, "detection")                          # None prints as a dash
    cost = section(html, "cost")
    assert "<td>no</td>" in cost and "<td>yes</td>" in cost            # grad_norm is over the 10-epoch budget
    assert len(re.findall(r'<svg class="chart"[^>]*role="img"', html)) == 3
    charts = html[html.index("id='charts'"):]
    # ROC: 2 estimators + random + chance; PR: same with the noise share; removal: 2x2 + random + 2 references
    assert charts.count("<polyline") == 4 + 4 + 7
    assert "broken_one" not in charts
    assert charts.count('stroke-dasharray') > 0
    # The precision-recall chance line is the noise share among the measured rows, not all rows.
    res["noise"]["share_of_measured"] = 0.141
    html = benchmark_report.write(tmp_path, res).read_text(encoding="utf-8")
    assert "chance (noise share 0.141)" in html and "noise share 0.13)" not in html


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for this test; `make test` installs it"
    path = benchmark_report.write(tmp_path, result())
    polylines = path.read_text(encoding="utf-8").count("<polyline")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert dom.count('<svg class="chart"') == 3
    assert 'aria-label="ROC: noisy rows found"' in dom
    assert dom.count("<polyline") == polylines > 0                     # the browser parsed every curve
    assert section(dom, "detection").count("<tr>") == 1 + len(result()["estimators"])
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1200,1800", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_strings_are_escaped_and_no_selection_is_said(tmp_path):
    res = result(error="<script>alert(1)</script>", selected=None)
    res["estimators"]["<b>odd</b>"] = {"kind": "estimator", "cost_class": None, "error": "x"}
    res["log"]["data"] = "data/<raw>"
    res["selection"]["reason"] = "no estimator within the cost budget"
    html = benchmark_report.write(tmp_path, res).read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>odd</b>" not in html and "&lt;b&gt;odd&lt;/b&gt;" in html
    assert "data/&lt;raw&gt;" in html
    assert "No estimator was chosen: no estimator within the cost budget" in html


def with_truth(res: dict) -> dict:
    """The result as a log with the simulator's truth gives it: the true-relevance NDCG beside the click
    metrics, recovery on both, the noise's cost on each, the trivial rankers."""
    res["primary_metric"], res["primary_metric_note"] = "ndcg_at_10_true", None
    res["test_metrics"] = [*METRICS, "ndcg_at_10_true"]
    res["recovery_metrics"] = ["ndcg_at_10_true", "auc_click"]
    for ref, value in (("clean", 0.9412), ("unweighted", 0.9213), ("oracle", 0.9377)):
        res["reference"][ref]["ndcg_at_10_true"] = value
    res["oracle"]["recovery_by_metric"] = {"ndcg_at_10_true": {"recovery": 0.8241, "recovery_se": 0.0611},
                                           "auc_click": {"recovery": 0.655, "recovery_se": 0.0813}}
    res["noise_cost"] = {"ndcg_at_10_true": {"clean": 0.9412, "unweighted": 0.9213, "cost": 0.0199,
                                             "recovery_defined": True, "note": None},
                         "auc_click": {"clean": 0.69, "unweighted": 0.695, "cost": -0.005, "recovery_defined": False,
                                       "note": "the noise did not cost the unweighted ranker anything on this metric "
                                               "(clean 0.6900, unweighted 0.6950)"}}
    res["trivial_rankers"] = {"random": {"auc_click": 0.5012, "ndcg_at_10": 0.31, "ndcg_at_10_true": 0.6123},
                              "logging_order": {"auc_click": 0.6644, "ndcg_at_10": 0.45, "ndcg_at_10_true": 0.7011}}
    for name, e in res["estimators"].items():
        if e.get("error"):
            continue
        e["test"]["ndcg_at_10_true"] = 0.9300 if name == "oof_loss" else 0.9251
        e["recovery_by_metric"] = {"ndcg_at_10_true": {"recovery": e["recovery"], "recovery_se": 0.0427},
                                   "auc_click": {"recovery": None, "recovery_se": None}}
    return res


def test_report_shows_the_true_relevance_ndcg_and_recovery_on_each_metric(tmp_path):
    html = benchmark_report.write(tmp_path, with_truth(result())).read_text(encoding="utf-8")
    retrain = section(html, "retrain")
    head = retrain[:retrain.index("</tr>")]
    assert "ndcg_at_10_true" in head and "recovery on ndcg_at_10_true (primary)" in head
    assert "recovery on auc_click" in head and head.count("± standard error") == 2
    oracle_row = retrain.split("<code>oracle</code>")[1].split("</tr>")[0]
    assert "0.9377" in oracle_row and "0.8241" in oracle_row and "0.0611" in oracle_row and "0.655" in oracle_row
    oof_row = retrain.split("<code>oof_loss</code>")[1].split("</tr>")[0]
    assert "0.93" in oof_row and "0.5" in oof_row
    for name, value in (("random", "0.6123"), ("logging_order", "0.7011")):
        row = retrain.split(f"<code>{name}</code>")[1].split("</tr>")[0]
        assert "trivial ranker" in row and value in row
    metric = html[html.index("id='metric'"):]
    metric = metric[:metric.index("</p>")]
    assert "Primary metric: <code>ndcg_at_10_true</code>" in metric
    assert "the noise costs the unweighted ranker 0.0199" in metric
    assert "on <code>auc_click</code> recovery is undefined: the noise did not cost the unweighted ranker anything" \
        in metric


def test_report_says_when_the_primary_metric_is_the_fallback(tmp_path):
    res = result()
    res["primary_metric_note"] = "the log has no true relevance (no _truth/dt=DAY files): recovery and the " \
                                 "selection go by auc_click, not benchmark.metric ndcg_at_10_true"
    html = benchmark_report.write(tmp_path, res).read_text(encoding="utf-8")
    assert "Primary metric: <code>auc_click</code> (the log has no true relevance" in html
    assert "ndcg_at_10_true" not in section(html, "retrain")
