"""sieve_raw_landed: announce that a day's raw logs have landed in the workspace.

Trigger it with the day, `airflow dags trigger sieve_raw_landed --conf '{"day": "2026-11-03"}'`, once
data/raw/impressions/dt=<day> and data/raw/catalog/dt=<day> are in place. It checks that they are
and emits a sieve_raw_day asset event with extra {"day": <day>}, which starts a sieve_retrain run for
that day (on top of its daily schedule). A producer may also post the event itself:
`POST /api/v2/assets/events` with the asset's id and the same extra.
"""
from __future__ import annotations

from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from sieve_tasks import RAW_DAY, retry_args, workspace

from pipeline.days import parse_day
from pipeline.runplan import missing_inputs


@task(outlets=[RAW_DAY])
def announce_day() -> str:
    context = get_current_context()
    try:
        day = parse_day(str(context["params"]["day"]))
    except ValueError as exc:
        raise AirflowFailException(f"day: {exc}") from exc
    if missing := missing_inputs(Path(workspace()), day):
        raise AirflowFailException(f"{day} has not landed: {', '.join(missing)} missing")
    context["outlet_events"][RAW_DAY].extra = {"day": day}
    return day


@dag(
    dag_id="sieve_raw_landed",
    schedule=None,
    params={"day": Param(type="string", format="date", description="the day that landed, YYYY-MM-DD")},
    default_args=retry_args(),
    tags=["sieve", "data"],
    doc_md=__doc__,
)
def sieve_raw_landed():
    announce_day()


sieve_raw_landed()
