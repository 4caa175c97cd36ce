"""The importance report of a run: how the weights are spread, which impressions count least and why
(grouped by reason, with the evidence behind it and an event lookup), and which sessions, users and
items look suspicious. User ids appear only pseudonymised. The score and weight histograms also go to
live/plots/custom/ as tables for `dvc plots`, so two runs' distributions can be overlaid."""
from __future__ import annotations

import hashlib
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import dumps_json
from pipeline.data.contract import same_event_ids
from pipeline.importance.lookup import section as lookup_section
from pipeline.importance.reasons import evidence_columns
from pipeline.reports import live
from pipeline.reports.html_page import cell, page, table
from pipeline.reports.svg_chart import histogram


def pseudonym(user_id, salt: str) -> str:
    return "user-" + hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()[:10]


def query_frequency(impressions: pd.DataFrame, head_min: int) -> pd.Series:
    """head / tail query by how many requests asked it; recommendations have no query. Categorical, so
    a 10M-row log holds one byte per row, not a string."""
    per_query = impressions.drop_duplicates("request_id").groupby("query")["request_id"].size()
    counts = impressions["query"].map(per_query).to_numpy(dtype=np.float64, na_value=np.nan)
    codes = np.where(impressions["query"].isna().to_numpy(), 1, np.where(counts >= head_min, 0, 2)).astype(np.int8)
    return pd.Series(pd.Categorical.from_codes(codes, ["head", "no query", "tail"]), index=impressions.index)


def _summary(frame: pd.DataFrame, by) -> list[dict]:
    """Rows, click rate, mean score and weight and the share of low weights per value of `by`, from sums
    (so a coarser key can be rolled up from a finer one without touching the rows again)."""
    sums = frame.groupby(by, sort=True, observed=True).agg(rows=("score", "size"), clicks=("clicked", "sum"),
                                            score=("score", "sum"), weight=("weight", "sum"), low=("low", "sum"))
    return _means(sums, by if isinstance(by, str) else by.name)


def _means(sums: pd.DataFrame, name: str) -> list[dict]:
    means = pd.DataFrame({"ctr": sums["clicks"] / sums["rows"], "mean_score": sums["score"] / sums["rows"],
                          "mean_weight": sums["weight"] / sums["rows"], "low_weight_share": sums["low"] / sums["rows"]})
    return [{name: str(k), "rows": int(sums.loc[k, "rows"]), **{c: round(float(v), 6) for c, v in row.items()}}
            for k, row in means.iterrows()]


def _category_summary(frame: pd.DataFrame, catalog: pd.DataFrame) -> list[dict]:
    """By top-level catalog category: summed per item first, then rolled up (no per-row category strings)."""
    per_item = frame.groupby("item_id", sort=False).agg(rows=("score", "size"), clicks=("clicked", "sum"),
                                                         score=("score", "sum"), weight=("weight", "sum"),
                                                         low=("low", "sum"))
    categories = catalog.drop_duplicates("item_id").set_index("item_id")["category"]
    top = per_item.index.to_series().map(categories).fillna("(none)").str.split(">").str[0]
    return _means(per_item.groupby(top.rename("category").to_numpy(), sort=True).sum(), "category")


def facts(scores: pd.DataFrame, impressions: pd.DataFrame, catalog: pd.DataFrame, estimator: str,
          cfg: dict) -> dict:
    """The report's facts. Everything per row stays numeric or a column of the log: titles and pseudonyms
    are looked up only for the rows shown, so a 10M-row log costs a few columns, not a copy of itself."""
    columns = ["event_id", "request_id", "session_id", "user_id", "surface", "query", "item_id", "position",
               "clicked", "purchased"]
    evidence = evidence_columns(scores)
    kept = ["score", "weight", *[c for c in ("reason", "split") if c in scores.columns], *evidence]
    if same_event_ids(scores["event_id"], impressions["event_id"]):
        frame = impressions[columns].assign(**{c: scores[c].to_numpy() for c in kept})
    else:
        frame = impressions[columns].merge(scores[["event_id", *kept]], on="event_id", how="inner")
    frame["low"] = frame["weight"] < float(cfg["low_weight"])
    salt = str(cfg["pseudonym_salt"])
    titles = catalog.drop_duplicates("item_id").set_index("item_id")["title"]
    n = int(cfg["rows_shown"])
    lowest = frame.nsmallest(n, "score").assign(
        user=lambda f: [pseudonym(u, salt) for u in f["user_id"]], title=lambda f: f["item_id"].map(titles))
    sessions = frame.groupby("session_id").agg(user_id=("user_id", "first"), impressions=("score", "size"),
                                               clicks=("clicked", "sum"), mean_score=("score", "mean"))
    sessions = sessions[sessions["impressions"] >= int(cfg["min_session_impressions"])].nsmallest(n, "mean_score")
    sessions["user"] = [pseudonym(u, salt) for u in sessions["user_id"]]
    users = frame.groupby("user_id").agg(impressions=("score", "size"), clicks=("clicked", "sum"),
                                         ctr=("clicked", "mean"), mean_weight=("weight", "mean"))
    overall_ctr = float(frame["clicked"].mean())
    bot_like = users[(users["impressions"] >= int(cfg["min_session_impressions"]))
                     & (users["ctr"] >= float(cfg["bot_ctr_multiple"]) * overall_ctr)]
    bot_like = bot_like.sort_values("ctr", ascending=False).head(n)
    bot_like = bot_like.set_index(pd.Index([pseudonym(u, salt) for u in bot_like.index], name="user"))
    items = frame.groupby("item_id").agg(clicks=("clicked", "sum"), purchases=("purchased", "sum"),
                                         mean_weight=("weight", "mean"))
    never_convert = items[(items["clicks"] >= int(cfg["min_item_clicks"])) & (items["purchases"] == 0)]
    never_convert = never_convert.sort_values("clicks", ascending=False).head(n)
    never_convert.insert(0, "title", never_convert.index.to_series().map(titles))

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
        "low_weight_rows": int(frame["low"].sum()),
        "by_reason": _by_reason(frame, evidence, titles, int(cfg["reason_examples"])) if "reason" in frame else [],
        "lowest": records(lowest, ["event_id", "user", "surface", "query", "title", "position", "clicked",
                                   "purchased", "score", "weight", *(["reason"] if "reason" in frame else [])]),
        "by_surface": _summary(frame, "surface"),
        "by_category": _category_summary(frame, catalog),
        "by_position": _summary(frame, "position"),
        "by_query_frequency": _summary(frame, query_frequency(frame, int(cfg["head_query_min_requests"]))
                                       .rename("query_frequency")),
        "suspicious_sessions": records(sessions, ["session_id", "user", "impressions", "clicks", "mean_score"]),
        "bot_like_users": records(bot_like, ["user", "impressions", "clicks", "ctr", "mean_weight"]),
        "items_whose_clicks_never_convert": records(never_convert,
                                                    ["item_id", "title", "clicks", "purchases", "mean_weight"]),
    }, frame


def _by_reason(frame: pd.DataFrame, evidence: list[str], titles: pd.Series, examples: int) -> list[dict]:
    """Rows per reason (the low-weight reasons first, most rows first), with the mean of each evidence
    column and the lowest-weighted examples."""
    groups = []
    low_total = max(1, int(frame["low"].sum()))
    for reason, rows in frame.groupby("reason", observed=True, sort=False):
        shown = rows.nsmallest(examples, "weight")
        groups.append({
            "reason": str(reason), "rows": int(len(rows)), "low_weight_rows": int(rows["low"].sum()),
            "share_of_low_weight_rows": round(float(rows["low"].sum()) / low_total, 6),
            "clicks": int(rows["clicked"].sum()), "mean_weight": round(float(rows["weight"].mean()), 6),
            "mean_evidence": {c.removeprefix("evidence_"): round(float(rows[c].mean()), 6) for c in evidence},
            "examples": [{"event_id": str(r.event_id), "query": None if pd.isna(r.query) else str(r.query),
                          "title": None if pd.isna(titles.get(r.item_id)) else str(titles.get(r.item_id)),
                          "position": int(r.position), "clicked": int(r.clicked),
                          "weight": round(float(r.weight), 6),
                          **{c.removeprefix("evidence_"): round(float(getattr(r, c)), 6) for c in evidence}}
                         for r in shown.itertuples(index=False)]})
    return sorted(groups, key=lambda g: (-g["low_weight_rows"], -g["rows"], g["reason"]))


def _reason_section(report: dict) -> list[str]:
    groups = report["by_reason"]
    if not groups:
        return []
    threshold = report["low_weight_threshold"]
    evidence = list(groups[0]["mean_evidence"])
    rows = [[escape(g["reason"]), cell(g["rows"]), cell(g["low_weight_rows"]), cell(g["share_of_low_weight_rows"]),
             cell(g["clicks"]), cell(g["mean_weight"]), *[cell(g["mean_evidence"][e]) for e in evidence]]
            for g in groups]
    body = ["<h2>Why weights are low: rows by reason</h2>",
            f"<p>{report['low_weight_rows']} of {report['events']} impressions weigh less than {threshold:g} "
            f"(importance.report.low_weight). Each row's reason and evidence are columns of scores.parquet.</p>",
            table("by_reason", ["reason", "rows", "low-weight rows", "share of low-weight rows", "clicks",
                                "mean weight", *[f"mean {e}" for e in evidence]], rows)]
    for i, g in enumerate(groups):
        if g["low_weight_rows"]:
            body += [f"<h3>{escape(g['reason'])}: lowest-weighted examples</h3>",
                     _rows_table(f"reason-examples-{i}", g["examples"])]
    return body


def _rows_table(table_id: str, rows: list[dict]) -> str:
    if not rows:
        return f"<p id='{table_id}'>None.</p>"
    headers = list(rows[0])
    return table(table_id, headers, [[cell(r[h]) for h in headers] for r in rows])


def render(report: dict, frame: pd.DataFrame, lookup_rows: int) -> str:
    body = [f"<h1>Importance: {escape(report['estimator'])}</h1>",
            f"<p>{report['events']} impressions scored. Weights: median {report['weight']['p50']:.3g}, "
            f"10% below {report['weight']['p10']:.3g}, 10% above {report['weight']['p90']:.3g}. "
            f"<a href='report.json'>report.json</a></p>",
            "<div class='charts' id='charts'>", histogram("score", frame["score"]),
            histogram("weight", frame["weight"]), "</div>",
            *_reason_section(report),
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
    if "reason" in frame:
        body += lookup_section(frame, evidence_columns(frame), lookup_rows)
    return page(f"sieve importance {report['estimator']}", body)


def histogram_rows(values: np.ndarray, bins: int) -> list[dict]:
    """Equal-width bins over [min, max] with the rows in each; the labels sort in bin order, so a chart
    with the label as its category axis keeps the bins in place."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    width = len(str(bins))
    return [{"bin": i + 1, "label": f"{i + 1:0{width}d}: {edges[i]:.4g} to {edges[i + 1]:.4g}",
             "lower": float(edges[i]), "upper": float(edges[i + 1]), "rows": int(count)}
            for i, count in enumerate(counts)]


def write_histograms(live_dir: Path, scores: pd.DataFrame, bins: int) -> None:
    """live/plots/custom/score_histogram.json and weight_histogram.json: importance.report.histogram_bins bins."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"importance.report.histogram_bins must be a whole number >= 1, got {bins!r}")
    for column in ("score", "weight"):
        live.write_table(live_dir, f"{column}_histogram", histogram_rows(scores[column].to_numpy(), bins),
                         x="rows", y="label", template="bar_horizontal")


def write(folder: Path, scores: pd.DataFrame, impressions: pd.DataFrame, catalog: pd.DataFrame,
          estimator: str, cfg: dict) -> dict:
    report, frame = facts(scores, impressions, catalog, estimator, cfg)
    (folder / "report.json").write_text(dumps_json(report), encoding="utf-8")
    (folder / "report.html").write_text(render(report, frame, int(cfg["lookup_rows"])), encoding="utf-8")
    write_histograms(folder / live.LIVE_DIR, scores, cfg["histogram_bins"])
    return report
