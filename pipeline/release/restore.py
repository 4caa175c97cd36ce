"""restore: bring back a day's champion model and reports from the DVC remote alone.

`python -m pipeline restore --remote URL --day D --out DIR` needs no workspace. It reads the day's
lineage record from the remote (lineage/days/D.json), finds the champion that served after that
run (the day's candidate when promoted, else the parent champion, whose files are in the record of
the run that trained it: lineage/models/<id>.json), writes .dvc files with the recorded hashes into
a scratch DVC repo beside DIR and `dvc pull`s them. DIR is then filled in one rename:

  DIR/champion.json              {model_id, day, path, source}: registry/champion.json's layout,
  DIR/models/<model_id>/encoder/ so DIR works as a registry folder; the files are byte for byte
  DIR/models/<model_id>/ranker/  the registry's models/<model_id>/
  DIR/reports/validate/          report.html, report.json, data_docs/, summary.json, metrics.json
  DIR/reports/importance/        report.html, report.json, metrics.json
  DIR/reports/evaluate/          metrics.json, calibration.csv
  DIR/reports/gate/decision.json, DIR/reports/promote/promotion.json
  DIR/lineage.json               the day's record, and the champion's when it is another run's

Exit codes: 0 restored; 1 no record for the day, an unpublished parent, or objects missing from
the remote (DIR is left as it was); 2 bad arguments or DIR not empty.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.atomic import atomic_dir, dumps_json
from pipeline.days import parse_day
from pipeline.release import lineage
from pipeline.release.publish import PublishError, checked, dvc

REMOTE_NAME = "origin"


class RestoreError(Exception):
    """The remote cannot give the day back: no record, a broken chain, missing objects."""


def report_outs(day: str) -> dict[str, str]:
    """Restored path under DIR -> the workspace output it comes from."""
    validate = f"work/validate/dt={day}"
    return {
        "reports/validate/report.html": f"{validate}/report.html",
        "reports/validate/report.json": f"{validate}/report.json",
        "reports/validate/data_docs": f"{validate}/data_docs",
        "reports/validate/summary.json": f"{validate}/summary.json",
        "reports/validate/metrics.json": f"{validate}/metrics.json",
        "reports/importance/report.html": f"work/importance/dt={day}/report.html",
        "reports/importance/report.json": f"work/importance/dt={day}/report.json",
        "reports/importance/metrics.json": f"work/importance/dt={day}/metrics.json",
        "reports/evaluate/metrics.json": "work/evaluate/metrics.json",
        "reports/evaluate/calibration.csv": "work/evaluate/calibration.csv",
        "reports/gate/decision.json": "work/gate/decision.json",
        "reports/promote/promotion.json": "work/promote/promotion.json",
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", required=True, metavar="URL",
                        help="the DVC remote publish pushed to (a local folder, s3://..., ...)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD: the run whose champion and reports to restore")
    parser.add_argument("--out", required=True, metavar="DIR", help="an empty or new folder to restore into")


def plan(store: lineage.RecordStore, day: str) -> tuple[dict, dict | None, dict | None, dict[str, dict]]:
    """(day's record, champion, champion's record, {restored path: recorded output}) for `day`."""
    record = store.day(day)
    if record is None:
        known = ", ".join(store.days()) or "none"
        raise RestoreError(f"no published record for {day} in {store.url} (published days: {known})")
    wanted: dict[str, dict] = {}
    for target, source in report_outs(day).items():
        if source not in record["outs"]:
            raise RestoreError(f"the record of {day} has no output {source}")
        wanted[target] = record["outs"][source]
    champion = lineage.champion_of(record)
    owner = None
    if champion is not None:
        try:
            owner = record if champion["source"] == "candidate" else lineage.record_of_model(store, champion["model_id"])
        except lineage.LineageError as exc:
            raise RestoreError(f"{day}'s champion is its parent: {exc}") from None
        folder = f"models/{champion['model_id']}"
        wanted[f"{folder}/encoder"] = owner["candidate"]["encoder"]
        wanted[f"{folder}/ranker"] = owner["candidate"]["ranker"]
    return record, champion, owner, wanted


def dvc_file(name: str, out: dict) -> str:
    entry = {key: out[key] for key in ("md5", "size", "nfiles", "hash") if key in out}
    return yaml.safe_dump({"outs": [{**entry, "path": name}]}, sort_keys=False)


def pull(url: str, wanted: dict[str, dict], scratch: Path) -> None:
    """Pull `wanted` into `scratch` (a new DVC repo) from the remote at `url`."""
    checked(dvc(["init", "--no-scm", "-q"], scratch), "dvc init (scratch)")
    checked(dvc(["remote", "add", "-d", REMOTE_NAME, url], scratch), "dvc remote add")
    for target, out in wanted.items():
        path = scratch / target
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f"{path.name}.dvc").write_text(dvc_file(path.name, out))
    checked(dvc(["pull"], scratch), f"dvc pull from {url}")
    absent = [target for target in wanted if not (scratch / target).exists()]
    if absent:
        raise RestoreError(f"dvc pull did not bring back {', '.join(absent)}")


def run(url: str, day: str, out: str | Path) -> dict:
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not an empty folder: restore writes only into a new or empty one")
    store = lineage.RecordStore(url)
    record, champion, owner, wanted = plan(store, day)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull-", dir=out.parent))
    try:
        try:
            pull(url, wanted, scratch)
        except PublishError as exc:
            raise RestoreError(f"the remote lacks objects of {day}'s run or champion: {exc}") from None
        with atomic_dir(out) as tmp:
            for target in wanted:
                (tmp / target).parent.mkdir(parents=True, exist_ok=True)
                os.replace(scratch / target, tmp / target)
            pointer = None
            if champion is not None:
                pointer = {**champion, "path": f"models/{champion['model_id']}"}
                (tmp / "champion.json").write_text(dumps_json(pointer))
            records = {"day": record, "champion": owner if owner is not record else None}
            (tmp / "lineage.json").write_text(dumps_json(records))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"day": day, "out": str(out), "champion": pointer, "promoted": record["promoted"]}


def main(args: argparse.Namespace) -> int:
    try:
        day = parse_day(args.day)
        url = lineage.resolve_url(args.remote, Path.cwd())
        if not lineage.is_url(url) and not Path(url).is_dir():
            raise ValueError(f"remote {url} is not a folder")
        result = run(url, day, args.out)
    except ValueError as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return lineage.EXIT_USAGE
    except RestoreError as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return lineage.EXIT_NOT_FOUND
    champion = result["champion"]
    if champion is None:
        served = "none (the day was not promoted and no champion served before it)"
    else:
        source = "the day's candidate" if champion["source"] == "candidate" else "its parent champion"
        served = f"{champion['model_id']} ({source})"
    print(f"restore: {day} into {result['out']}: champion {served}; reports in reports/")
    return 0
