"""Data-quality reports for sieve_retrain runs, served by the Airflow api-server.

A FastAPI app mounted at ``/sieve-reports`` serves each day's validate report folder
(``<workspace>/work/validate/dt=<day>/``), and an external view adds a "Data quality report" tab
to every DAG run page that opens ``/sieve-reports/runs/<dag_id>/<run_id>``: that route maps the run
to the day it processed (its data interval start, in UTC) and redirects to the day's report.html.

A second tab, "Training curves", opens ``/sieve-reports/curves/runs/<dag_id>/<run_id>``: the HTML
`dvc plots show` renders from the workspace's dvc.yaml (training curves, ROC, precision-recall,
calibration, importance histograms), made on request in a temporary folder. The workspace holds one
set of outputs, the latest run's: the page says which day that is, and when it is not the run's day.
The page loads Vega from its CDN in the browser, as `dvc plots show` pages do.

Every route needs read access to sieve_retrain's DAG runs (Airflow's auth manager; in the UI the
session cookie comes along with the tab's iframe).

The api-server, scheduler and every task process import this module: Airflow's own API and
models are imported inside the handlers, not here.
"""
from __future__ import annotations

import html
import json
import mimetypes
import os
import re
import subprocess
import sys
import tempfile
from datetime import date, timezone
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

DAG_ID = "sieve_retrain"
URL_PREFIX = "/sieve-reports"
REPORT = "report.html"
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PROJECT = Path(__file__).resolve().parents[1]
# The public path, under the api-server's [api] base_url when Airflow is served below a sub-path.
URL_PREFIX_PATH = urlsplit(conf.get("api", "base_url", fallback="") or "/").path.rstrip("/") + URL_PREFIX
RUN_HREF = f"{URL_PREFIX_PATH}/runs/{{DAG_ID}}/{{RUN_ID}}"
CURVES_HREF = f"{URL_PREFIX_PATH}/curves/runs/{{DAG_ID}}/{{RUN_ID}}"
CURVES_TIMEOUT_S = 120  # `dvc plots show` takes a few seconds; a stuck one must not hold a worker thread

# Python's table misses some web-font and source-map types that the Data Docs assets use.
CONTENT_TYPES = {
    ".html": "text/html", ".htm": "text/html", ".json": "application/json", ".css": "text/css",
    ".js": "text/javascript", ".map": "application/json", ".svg": "image/svg+xml",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
}


def workspace() -> Path:
    """Same rule as the DAG, read per request so the api-server follows its environment."""
    return Path(os.environ.get("SIEVE_WORKSPACE", str(PROJECT)))


def validate_root() -> Path:
    return workspace() / "work" / "validate"


def check_day(day: str) -> str:
    if not DAY_RE.match(day):
        raise HTTPException(400, f"day must be YYYY-MM-DD, got {day!r}")
    try:
        date.fromisoformat(day)
    except ValueError:
        raise HTTPException(400, f"not a calendar day: {day!r}") from None
    return day


def day_folder(day: str) -> Path:
    return validate_root() / f"dt={check_day(day)}"


def resolve_inside(folder: Path, relpath: str) -> Path | None:
    """What `relpath` names inside `folder`, or None if missing or outside it (.., absolute, symlinks)."""
    parts = relpath.replace("\\", "/").split("/")
    if relpath.startswith(("/", "\\")) or "\x00" in relpath or ".." in parts:
        return None
    try:
        base = folder.resolve(strict=True)
        target = (base / relpath).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target != base and base not in target.parents:
        return None
    return target


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def days_with_report() -> list[str]:
    root = validate_root()
    if not root.is_dir():
        return []
    days = [p.name.removeprefix("dt=") for p in root.glob("dt=*")
            if DAY_RE.match(p.name.removeprefix("dt=")) and (p / REPORT).is_file()]
    return sorted(days, reverse=True)


def run_day(dag_id: str, run_id: str) -> str:
    """The day a run processed: its data interval start (else logical date), as a UTC date."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            select(DagRun.data_interval_start, DagRun.logical_date)
            .where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        ).first()
    if row is None:
        raise HTTPException(404, f"no run {run_id!r} of DAG {dag_id!r}")
    start = row.data_interval_start or row.logical_date
    if start is None:
        raise HTTPException(404, f"run {run_id!r} has no data interval or logical date, so no day")
    return start.astimezone(timezone.utc).date().isoformat()


async def require_run_read(request: Request) -> None:
    """Allow only users who may read sieve_retrain's DAG runs (bearer token or the UI's cookie)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api import security

    user = await security.get_user(request, None, await security.bearer_scheme(request))
    # The check reads the DAG's team from the database: keep it off the event loop.
    await run_in_threadpool(security.requires_access_dag("GET", DagAccessEntity.RUN, DAG_ID), request, user)


def redirect(request: Request, route: str, **params: str) -> RedirectResponse:
    # A path-only Location that includes the mount prefix, whatever host the proxy exposes.
    return RedirectResponse(request.url_for(route, **params).path, status_code=302)


def page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1.5rem}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status_code,
    )


app = FastAPI(title="sieve data-quality reports", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(require_run_read)])


@app.exception_handler(HTTPException)
async def error_page(request: Request, exc: HTTPException):
    # The routes open in the run page's iframe: a readable page beats a JSON body there.
    response = page(f"{exc.status_code}: data-quality report", f"<p>{html.escape(str(exc.detail))}</p>",
                    exc.status_code)
    response.headers.update(exc.headers or {})
    return response


@app.get("/")
def index(request: Request):
    return redirect(request, "days")


@app.get("/runs/{dag_id}/{run_id:path}", name="run_report")
def run_report(request: Request, dag_id: str, run_id: str):
    if dag_id != DAG_ID:
        raise HTTPException(404, f"only {DAG_ID} runs have a data-quality report, not {dag_id} runs")
    day = run_day(dag_id, run_id)
    if not (day_folder(day) / REPORT).is_file():
        raise HTTPException(404, f"run {run_id!r} processed {day}, which has no data-quality report "
                                 f"(yet): work/validate/dt={day}/{REPORT} is missing")
    return redirect(request, "day_file", day=day, path=REPORT)


@app.get("/days/", name="days")
def days():
    listed = days_with_report()
    if not listed:
        return page("Data-quality reports", "<p>No reports yet under work/validate/.</p>")
    items = "".join(f"<li><a href='{d}/{REPORT}'>{d}</a> (<a href='{d}/data_docs/index.html'>Data Docs</a>, "
                    f"<a href='{d}/report.json'>JSON</a>)</li>" for d in listed)
    return page("Data-quality reports", f"<ul>{items}</ul>")


@app.get("/days/{day}")
def day_index(request: Request, day: str):
    return redirect(request, "day_file", day=check_day(day), path=REPORT)


@app.api_route("/days/{day}/{path:path}", methods=["GET", "HEAD"], name="day_file")
def day_file(request: Request, day: str, path: str):
    folder = day_folder(day)
    target = resolve_inside(folder, path or REPORT)
    if target is not None and target.is_dir():
        if not path.endswith("/"):
            # The folder's index.html has relative links: they need the trailing slash.
            return redirect(request, "day_file", day=day, path=path + "/")
        target = resolve_inside(folder, path + "index.html")
    if target is None or not target.is_file():
        raise HTTPException(404, f"no file {path!r} in the {day} report")
    return FileResponse(target, media_type=content_type(target),
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def outputs_day() -> str | None:
    """The day the workspace's current outputs are from (the evaluate stage writes it), if known."""
    try:
        return json.loads((workspace() / "work" / "evaluate" / "metrics.json").read_text(encoding="utf-8"))["day"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def render_curves(folder: Path) -> str:
    """The page `dvc plots show` renders for the workspace, written into `folder` and read back."""
    result = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(folder)], cwd=workspace(),
                            capture_output=True, text=True, check=False, timeout=CURVES_TIMEOUT_S,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    index = folder / "index.html"
    if result.returncode != 0 or not index.is_file():
        raise HTTPException(500, f"dvc plots show failed in {workspace()}: "
                                 f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return index.read_text(encoding="utf-8")


@app.get("/curves/runs/{dag_id}/{run_id:path}", name="run_curves")
def run_curves(dag_id: str, run_id: str):
    if dag_id != DAG_ID:
        raise HTTPException(404, f"only {DAG_ID} runs have training curves, not {dag_id} runs")
    day, shown = run_day(dag_id, run_id), outputs_day()
    note = f"Curves of the workspace's outputs, from day {shown or 'unknown'}"
    if shown != day:
        note += f"; this run processed {day}: its own outputs are no longer (or not yet) in the workspace"
    with tempfile.TemporaryDirectory(prefix="sieve-curves-") as folder:
        rendered = render_curves(Path(folder))
    return HTMLResponse(rendered.replace("<body>", f"<body><p id='sieve-curves-note'>{html.escape(note)}.</p>", 1),
                        headers={"Cache-Control": "no-cache"})


class SieveReportsPlugin(AirflowPlugin):
    name = "sieve_reports"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "sieve data-quality reports"}]
    # destination dag_run: a tab on each run page; the UI fills {DAG_ID} and {RUN_ID} in the href.
    external_views = [{
        "name": "Data quality report",
        "href": RUN_HREF,
        "destination": "dag_run",
        "url_route": "sieve-data-quality",
    }, {
        "name": "Training curves",
        "href": CURVES_HREF,
        "destination": "dag_run",
        "url_route": "sieve-curves",
    }]
