"""The sieve_reports plugin: found by Airflow's plugins manager, mounted in the api-server, linked from runs.

The app is exercised through the api-server's own app (create_app), so routes carry the real mount
prefix and the real auth manager; runs are real DagRun rows in the tests' migrated SQLite database.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

from airflow_services import free_port, terminate_group
from conftest import ROOT

DAG_ID = "sieve_retrain"
PREFIX = "/sieve-reports"
MANUAL_RUN = "manual__2026-11-02T03:17:00+00:00"


def ui_href(href: str, dag_id: str, run_id: str) -> str:
    """What the UI does with an external view's href on a run page (encodeURIComponent on both ids)."""
    def encode(text: str) -> str:
        return quote(text, safe="!~*'()")
    return href.replace("{DAG_ID}", encode(dag_id)).replace("{RUN_ID}", encode(run_id))


def write_report(workspace: Path, day: str, with_html: bool = True) -> Path:
    """A day's report folder shaped like validate's: summary page, JSON, a small Data Docs site."""
    folder = workspace / "work" / "validate" / f"dt={day}"
    docs = folder / "data_docs"
    (docs / "static" / "styles").mkdir(parents=True)
    (docs / "static" / "fonts").mkdir()
    (docs / "validations" / "impressions").mkdir(parents=True)
    if with_html:
        (folder / "report.html").write_text(f"<html><body><h1>Data quality {day}</h1>"
                                            "<a href='data_docs/index.html'>details</a></body></html>")
    (folder / "report.json").write_text(json.dumps({"day": day, "success": True}))
    (docs / "index.html").write_text("<html><link href='static/styles/data_docs.css'>index</html>")
    (docs / "validations" / "impressions" / "run.html").write_text(
        "<html><link href='../../static/styles/data_docs.css'>impressions suite</html>")
    (docs / "static" / "styles" / "data_docs.css").write_text("body { margin: 0 }")
    (docs / "static" / "main.js").write_text("console.log('docs')")
    (docs / "static" / "fonts" / "icons.woff2").write_bytes(b"wOF2\x00")
    return folder


@pytest.fixture
def reports(tmp_path, monkeypatch) -> Path:
    """A workspace with reports for 2026-11-01 and 2026-11-03; 2026-11-02 has JSON but no page."""
    workspace = tmp_path / "ws"
    for day in ("2026-11-01", "2026-11-03"):
        write_report(workspace, day)
    write_report(workspace, "2026-11-02", with_html=False)
    (workspace / "work" / "validate" / "dt=not-a-day").mkdir()
    (workspace / "work" / "validate" / "secret.txt").write_text("outside the day folder")
    monkeypatch.setenv("SIEVE_WORKSPACE", str(workspace))
    return workspace


@pytest.fixture(scope="module")
def plugins(airflow_db):
    from airflow import plugins_manager

    plugins_manager.ensure_plugins_loaded()
    return plugins_manager


@pytest.fixture(scope="module")
def api(plugins):
    from airflow.api_fastapi.app import create_app

    return create_app()


@pytest.fixture(scope="module")
def token(api) -> str:
    """A JWT for a viewer, the least role that may read DAG runs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))


@pytest.fixture
def client(api, token):
    """Signed in the way the run page's iframe is: the UI's session cookie."""
    from fastapi.testclient import TestClient

    with TestClient(api, follow_redirects=False) as client:
        client.cookies.set("_token", token)
        yield client


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


@pytest.fixture
def add_run(airflow_db):
    """Insert DagRun rows through Airflow's ORM; remove them afterwards (the database is shared)."""
    from sqlalchemy import delete

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    added = []

    def add(run_id, logical_date, interval, dag_id=DAG_ID, run_type=DagRunType.MANUAL):
        with create_session() as session:
            session.add(DagRun(dag_id=dag_id, run_id=run_id, run_type=run_type,
                               logical_date=logical_date, data_interval=interval))
        added.append((dag_id, run_id))
        return run_id

    yield add
    with create_session() as session:
        for dag_id, run_id in added:
            session.execute(delete(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))


@pytest.fixture
def manual_run(dag, add_run) -> str:
    """A run triggered by hand at 03:17 on the 2nd: the DAG's timetable gives it the 1st as its day."""
    from airflow.serialization.encoders import coerce_to_core_timetable

    run_after = datetime(2026, 11, 2, 3, 17, tzinfo=timezone.utc)
    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=run_after)
    assert interval.start.date().isoformat() == "2026-11-01"
    return add_run(MANUAL_RUN, run_after, (interval.start, interval.end))


def external_view(plugins_json: dict, name: str = "Data quality report") -> dict:
    (plugin,) = [p for p in plugins_json["plugins"] if p["name"] == "sieve_reports"]
    (view,) = [v for v in plugin["external_views"] if v["name"] == name]
    return view


# --- discovery ------------------------------------------------------------------------------------

def test_plugins_manager_finds_the_plugin_in_the_plugins_folder(plugins):
    info = {p["name"]: p for p in plugins.get_plugin_info()}
    assert "sieve_reports" in info, plugins.get_import_errors()
    assert "sieve_reports.py" in str(info["sieve_reports"]["source"])
    assert not [path for path in plugins.get_import_errors() if "sieve_reports" in path]
    apps = [a for a in plugins.get_fastapi_plugins()[0] if a["url_prefix"] == PREFIX]
    assert len(apps) == 1 and apps[0]["name"]


def test_the_ui_gets_a_dag_run_tab_pointing_at_the_run_route(client):
    """What /api/v2/plugins tells the UI: a dag_run external view with a url_route (that makes it a tab)."""
    response = client.get("/api/v2/plugins")
    assert response.status_code == 200
    view = external_view(response.json())
    assert view["destination"] == "dag_run"
    assert view["name"] == "Data quality report"
    assert view["url_route"]
    assert view["href"] == f"{PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}"


def test_the_ui_gets_a_training_curves_tab_next_to_it(client):
    view = external_view(client.get("/api/v2/plugins").json(), "Training curves")
    assert view["destination"] == "dag_run" and view["url_route"] == "sieve-curves"
    assert view["href"] == f"{PREFIX}/curves/runs/{{DAG_ID}}/{{RUN_ID}}"


def test_importing_the_plugin_is_light():
    """Every api-server, scheduler and task process imports it: nothing heavy, not even Airflow's API."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sieve_reports', {str(ROOT / 'plugins' / 'sieve_reports.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "heavy = ['torch', 'transformers', 'pandas', 'great_expectations', 'sklearn', 'dvc',\n"
        "         'airflow.api_fastapi.app', 'airflow.api_fastapi.core_api.security', 'airflow.models.dagrun']\n"
        "print('HEAVY:' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY:\n" in out.stdout, out.stdout


# --- serving a day's reports ----------------------------------------------------------------------

def test_serves_the_report_page_json_and_data_docs(client, reports):
    day = f"{PREFIX}/days/2026-11-01"
    page = client.get(f"{day}/report.html")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "Data quality 2026-11-01" in page.text
    assert client.get(f"{day}/report.json").json() == {"day": "2026-11-01", "success": True}
    expected = {
        "data_docs/index.html": "text/html",
        "data_docs/validations/impressions/run.html": "text/html",
        "data_docs/static/styles/data_docs.css": "text/css",
        "data_docs/static/main.js": "text/javascript",
        "data_docs/static/fonts/icons.woff2": "font/woff2",
        "report.json": "application/json",
    }
    for path, content_type in expected.items():
        response = client.get(f"{day}/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"].split(";")[0] == content_type, path
    assert "impressions suite" in client.get(f"{day}/data_docs/validations/impressions/run.html").text
    # A folder serves its index page (after a trailing slash, for its relative links); a bare day
    # goes to its summary page.
    index = (reports / "work/validate/dt=2026-11-01/data_docs/index.html").read_text()
    assert client.get(f"{day}/data_docs/").text == index
    assert client.get(f"{day}/data_docs").headers["location"] == f"{day}/data_docs/"
    assert client.get(day).headers["location"] == f"{day}/report.html"


def test_lists_days_with_a_report_newest_first(client, reports):
    response = client.get(f"{PREFIX}/days/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "2026-11-03" in response.text and "2026-11-01" in response.text
    assert response.text.index("2026-11-03") < response.text.index("2026-11-01")
    assert "2026-11-02" not in response.text and "not-a-day" not in response.text
    assert client.get(f"{PREFIX}/").headers["location"] == f"{PREFIX}/days/"


@pytest.mark.parametrize("path", [
    "%2e%2e/secret.txt",
    "..%2Fsecret.txt",
    "data_docs/..%2F..%2Fsecret.txt",
    "%2Fetc%2Fpasswd",
    "link-out.txt",
    "missing.html",
])
def test_refuses_paths_that_leave_the_day_folder(client, reports, path):
    (reports / "work/validate/dt=2026-11-01/link-out.txt").symlink_to(reports / "work/validate/secret.txt")
    response = client.get(f"{PREFIX}/days/2026-11-01/{path}")
    assert response.status_code == 404
    assert "outside the day folder" not in response.text


@pytest.mark.parametrize("day", ["2026-1-01", "2026-02-30", "latest", "%2e%2e"])
def test_a_day_must_be_a_calendar_date(client, reports, day):
    assert client.get(f"{PREFIX}/days/{day}/report.html").status_code in (400, 404)
    if day != "%2e%2e":
        assert client.get(f"{PREFIX}/days/{day}/report.html").status_code == 400


# --- from a run to its report ---------------------------------------------------------------------

def test_a_run_redirects_to_the_report_of_the_day_it_processed(client, reports, manual_run):
    """Logical date 2026-11-02T03:17, data interval from 2026-11-01: the 1st's report, via the tab's href."""
    href = ui_href(external_view(client.get("/api/v2/plugins").json())["href"], DAG_ID, manual_run)
    response = client.get(href)
    assert response.status_code == 302
    assert response.headers["location"] == f"{PREFIX}/days/2026-11-01/report.html"
    assert "Data quality 2026-11-01" in client.get(href, follow_redirects=True).text


def test_a_run_without_a_data_interval_falls_back_to_its_logical_date(client, reports, add_run):
    run_id = add_run("manual__legacy_2026-11-03", datetime(2026, 11, 3, 6, tzinfo=timezone.utc), None)
    response = client.get(f"{PREFIX}/runs/{DAG_ID}/{quote(run_id, safe='')}")
    assert response.headers["location"] == f"{PREFIX}/days/2026-11-03/report.html"


def test_a_run_whose_day_has_no_report_is_a_404_that_says_so(client, reports, add_run):
    from airflow.utils.types import DagRunType

    start, end = datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2026, 12, 2, tzinfo=timezone.utc)
    run_id = add_run("scheduled__2026-12-02T00:00:00+00:00", end, (start, end), run_type=DagRunType.SCHEDULED)
    response = client.get(f"{PREFIX}/runs/{DAG_ID}/{quote(run_id, safe='')}")
    assert response.status_code == 404
    assert "2026-12-01" in response.text and "no data-quality report" in response.text


def test_unknown_runs_and_other_dags_are_404s(client, reports, add_run):
    missing = client.get(f"{PREFIX}/runs/{DAG_ID}/manual__nope")
    assert missing.status_code == 404 and "no run" in missing.text
    other = add_run("manual__other", datetime(2026, 11, 2, tzinfo=timezone.utc), None, dag_id="other_dag")
    response = client.get(f"{PREFIX}/runs/other_dag/{other}")
    assert response.status_code == 404 and DAG_ID in response.text


# --- access -----------------------------------------------------------------------------------------

def test_reports_need_a_signed_in_user(api, reports):
    from fastapi.testclient import TestClient

    with TestClient(api, follow_redirects=False) as anonymous:
        for path in ("/days/", "/days/2026-11-01/report.html", f"/runs/{DAG_ID}/{quote(MANUAL_RUN, safe='')}"):
            assert anonymous.get(PREFIX + path).status_code == 401, path


def test_reports_need_read_access_to_the_dags_runs(client, reports, monkeypatch):
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    asked = []

    def deny(**kwargs):
        asked.append(kwargs)
        return False

    monkeypatch.setattr(get_auth_manager(), "is_authorized_dag", deny)
    assert client.get(f"{PREFIX}/days/2026-11-01/report.html").status_code == 403
    assert asked and asked[0]["method"] == "GET"
    assert asked[0]["access_entity"] == DagAccessEntity.RUN and asked[0]["details"].id == DAG_ID


# --- the real api-server ----------------------------------------------------------------------------

@pytest.mark.slow
def test_the_api_server_mounts_the_app(reports, manual_run, tmp_path):
    """`airflow api-server` on 127.0.0.1: sign in, read the tab's href, follow it to the report."""
    import httpx

    port = free_port()
    passwords = tmp_path / "passwords.json"
    env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    log = (tmp_path / "api-server.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "api-server",
                               "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        # Generous: beside the scheduler and deployment tests on two cores a start has taken over 25 s.
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "api-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "api-server did not start in 120 s"
            time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=10) as http:
            password = json.loads(passwords.read_text())["admin"]
            token = http.post("/auth/token", json={"username": "admin", "password": password}).json()["access_token"]
            http.cookies.set("_token", token)
            href = ui_href(external_view(http.get("/api/v2/plugins").json())["href"], DAG_ID, manual_run)
            response = http.get(href)
            assert response.status_code == 302
            assert response.headers["location"] == f"{PREFIX}/days/2026-11-01/report.html"
            page = http.get(response.headers["location"])
            assert page.status_code == 200 and "Data quality 2026-11-01" in page.text
            assert http.get(f"{PREFIX}/days/2026-11-01/data_docs/static/styles/data_docs.css") \
                .headers["content-type"].startswith("text/css")
    finally:
        terminate_group(server, timeout=15)
        log.close()


# --- training curves ------------------------------------------------------------------------------

def test_the_curves_tab_serves_what_dvc_plots_show_renders(client, reports, manual_run):
    """A DVC workspace whose dvc.yaml draws one step curve; its outputs are from another day than the run's."""
    for init in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(init, cwd=reports, check=True, capture_output=True)
    live = reports / "work" / "train" / "live" / "plots" / "metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("step\tloss\n1\t0.7\n2\t0.6\n")
    (reports / "work" / "evaluate").mkdir(parents=True)
    (reports / "work" / "evaluate" / "metrics.json").write_text(json.dumps({"day": "2026-11-03"}))
    (reports / "dvc.yaml").write_text("plots:\n  - work/train/live/plots/metrics/loss.tsv:\n"
                                      "      title: train loss per step\n      x: step\n      y: loss\n")
    page = client.get(ui_href(f"{PREFIX}/curves/runs/{{DAG_ID}}/{{RUN_ID}}", DAG_ID, manual_run))
    assert page.status_code == 200, page.text
    assert "train loss per step" in page.text and "vega" in page.text
    assert "from day 2026-11-03; this run processed 2026-11-01" in page.text
    assert client.get(f"{PREFIX}/curves/runs/other_dag/x").status_code == 404
