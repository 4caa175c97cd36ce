"""The importance report of a run: how the weights are spread, which impressions count least and why,
and which sessions, users and items look suspicious. User ids appear only pseudonymised."""
from __future__ import annotations

import hashlib
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import dumps_json
from pipeline.features import item_titles
from pipeline.html_page import cell, page, table
from pipeline.svg_chart import histogram


def pseudonym(user_id, salt: str) -> str:
    return "user-" + hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()[:10]


def query_frequency(impressions: pd.DataFrame, head_min: int) -> pd.Series:
    """head / tail query by how many requests asked it; recommendations have no query."""
    per_query = impressions.drop_duplicates("request_id").groupby("query")["request_id"].size()
    counts = impressions["query"].map(per_query)
    bucket = np.where(counts >= head_min, "head", "tail")
    return pd.Series(np.where(impressions["query"].isna(), "no query", bucket), index=impressions.index)


def _summary(frame: pd.DataFrame, by: str) -> list[dict]:
    grouped = frame.groupby(by, sort=True).agg(rows=("score", "size"), ctr=("clicked", "mean"),
                                               mean_score=("score", "mean"), mean_weight=("weight", "mean"),
                                               low_weight_share=("low", "mean"))
    return [{by: str(k), "rows": int(row["rows"]),
             **{c: round(float(v), 6) for c, v in row.items() if c != "rows"}} for k, row in grouped.iterrows()]


def facts(scores: pd.DataFrame, impressions: pd.DataFrame, catalog: pd.DataFrame, estimator: str,
          cfg: dict) -> dict:
    frame = impressions.merge(scores[["event_id", "score", "weight"]], on="event_id", how="inner")
    frame["title"] = item_titles(frame, catalog)
    categories = catalog.drop_duplicates("item_id").set_index("item_id")["category"]
    frame["category"] = frame["item_id"].map(categories).fillna("(none)").str.split(">").str[0]
    frame["query_frequency"] = query_frequency(frame, int(cfg["head_query_min_requests"]))
    frame["low"] = frame["weight"] < float(cfg["low_weight"])
    frame["user"] = [pseudonym(u, str(cfg["pseudonym_salt"])) for u in frame["user_id"]]
    n = int(cfg["rows_shown"])
    lowest = frame.nsmallest(n, "score")
    sessions = frame.groupby("session_id").agg(user=("user", "first"), impressions=("score", "size"),
                                               clicks=("clicked", "sum"), mean_score=("score", "mean"))
    sessions = sessions[sessions["impressions"] >= int(cfg["min_session_impressions"])]
    users = frame.groupby("user").agg(impressions=("score", "size"), clicks=("clicked", "sum"),
                                      ctr=("clicked", "mean"), mean_weight=("weight", "mean"))
    overall_ctr = float(frame["clicked"].mean())
    bot_like = users[(users["impressions"] >= int(cfg["min_session_impressions"]))
                     & (users["ctr"] >= float(cfg["bot_ctr_multiple"]) * overall_ctr)]
    items = frame.groupby("item_id").agg(title=("title", "first"), clicks=("clicked", "sum"),
                                         purchases=("purchased", "sum"), mean_weight=("weight", "mean"))
    never_convert = items[(items["clicks"] >= int(cfg["min_item_clicks"])) & (items["purchases"] == 0)]

    def records(df: pd.DataFrame, columns: list[str]) -> list[dict]:
        out = df.reset_index()[columns].astype(object).where(df.reset_index()[columns].notna(), None)
        return [{k: (round(v, 6) if isinstance(v, float) else (int(v) if isinstance(v, (np.integer,)) else v))
                 for k, v in row.items()} for row in out.to_dict("records")]

    return {
        "estimator": estimator,
        "events": int(len(frame)),
        "score": {q: round(float(frame["score"].quantile(v)), 6) for q, v in
                  (("min", 0.0), ("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("max", 1.0))},
        "weight": {q: round(float(frame["weight"].quantile(v)), 6) for q, v in
                   (("min", 0.0), ("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("max", 1.0))},
        "low_weight_threshold": float(cfg["low_weight"]),
        "lowest": records(lowest, ["event_id", "user", "surface", "query", "title", "position", "clicked",
                                   "purchased", "score", "weight"]),
        "by_surface": _summary(frame, "surface"),
        "by_category": _summary(frame, "category"),
        "by_position": _summary(frame, "position"),
        "by_query_frequency": _summary(frame, "query_frequency"),
        "suspicious_sessions": records(sessions.nsmallest(n, "mean_score"),
                                       ["session_id", "user", "impressions", "clicks", "mean_score"]),
        "bot_like_users": records(bot_like.sort_values("ctr", ascending=False).head(n),
                                  ["user", "impressions", "clicks", "ctr", "mean_weight"]),
        "items_whose_clicks_never_convert": records(never_convert.sort_values("clicks", ascending=False).head(n),
                                                    ["item_id", "title", "clicks", "purchases", "mean_weight"]),
    }, frame


def _rows_table(table_id: str, rows: list[dict]) -> str:
    if not rows:
        return f"<p id='{table_id}'>None.</p>"
    headers = list(rows[0])
    return table(table_id, headers, [[cell(r[h]) for h in headers] for r in rows])


def render(report: dict, frame: pd.DataFrame) -> str:
    body = [f"<h1>Importance: {escape(report['estimator'])}</h1>",
            f"<p>{report['events']} impressions scored. Weights: median {report['weight']['p50']:.3g}, "
            f"10% below {report['weight']['p10']:.3g}, 10% above {report['weight']['p90']:.3g}. "
            f"<a href='report.json'>report.json</a></p>",
            "<div class='charts' id='charts'>", histogram("score", frame["score"]),
            histogram("weight", frame["weight"]), "</div>",
            "<h2>Lowest-valued impressions</h2>", _rows_table("lowest", report["lowest"])]
    for key, title in (("by_surface", "By surface"), ("by_category", "By category"),
                       ("by_position", "By position"), ("by_query_frequency", "By query frequency")):
        body += [f"<h2>{title}</h2>", _rows_table(key, report[key])]
    body += ["<h2>Suspicious sessions (lowest mean score)</h2>",
             _rows_table("suspicious_sessions", report["suspicious_sessions"]),
             "<h2>Bot-like users (click-through far above the log's)</h2>",
             _rows_table("bot_like_users", report["bot_like_users"]),
             "<h2>Items whose clicks never convert</h2>",
             _rows_table("items_whose_clicks_never_convert", report["items_whose_clicks_never_convert"])]
    return page(f"sieve importance {report['estimator']}", body)


def write(folder: Path, scores: pd.DataFrame, impressions: pd.DataFrame, catalog: pd.DataFrame,
          estimator: str, cfg: dict) -> dict:
    report, frame = facts(scores, impressions, catalog, estimator, cfg)
    (folder / "report.json").write_text(dumps_json(report), encoding="utf-8")
    (folder / "report.html").write_text(render(report, frame), encoding="utf-8")
    return report
