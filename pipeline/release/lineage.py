"""Lineage: what each published run used and produced, kept in the DVC remote beside its data.

`python -m pipeline publish` writes one record per run (a day) into the remote, under `lineage/`:

  lineage/days/<day>.json         the record of the day's latest published run
  lineage/models/<model_id>.json  the record of the run whose candidate was that model

A record holds the data days (the day and its drift window), the params (hash and values), the
code version (git commit, a hash of pipeline/, the code deps dvc.lock recorded), the importance
estimator and weight transform, the parent champion (the one that served before the day), the
candidate, the gate decision and the promotion outcome, and every dvc.lock output with its hash:
what `python -m pipeline restore` pulls back. DVC's own objects live beside it in the same remote
(files/md5/..., runs/...); `dvc gc --cloud` only touches those.

`python -m pipeline lineage` reads the records and prints a model's chain of parent champions. Git
backs it where git has the runs: each model's run commit is named with its day tag when the tag
still points at it, and a day that was run and committed but never published is shown from its
commit (pipeline/release/history.py).
The records are read and written through DVC's filesystem for the remote URL, so any remote DVC
can push to (a local folder, s3://, ssh://, ...) holds them too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from pipeline.days import parse_day
from pipeline.params import load_params
from pipeline.release import history

PREFIX = "lineage"
DAYS = "days"
MODELS = "models"
SCHEMA = 1
# Workspace outputs that hold the candidate model (the registry copies them to models/<id>/).
ENCODER_OUT = "work/pretrain/encoder"
RANKER_OUT = "work/train/model"
# Exit codes shared by publish, restore and lineage.
EXIT_NOT_FOUND = 1      # no record, no champion, a missing object, a failed push
EXIT_USAGE = 2          # bad arguments or a workspace that is not one


class LineageError(Exception):
    """Something the records cannot answer: no record for a day or model, a broken chain."""


def is_url(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def resolve_url(url: str, base: str | Path) -> str:
    """A remote URL as DVC takes it: a local path made absolute (relative to `base`), else as is."""
    if is_url(url):
        return url
    path = Path(os.path.expanduser(url))
    return str(path if path.is_absolute() else (Path(base) / path).resolve())


def remote_settings(params: dict, workspace: str | Path) -> tuple[str, str]:
    """(name, absolute url) of the workspace's remote from params.yaml's `remote` section."""
    section = params.get("remote") or {}
    name, url = section.get("name"), section.get("url")
    if not name or not url:
        raise ValueError("params.yaml: the remote section needs a name and a url")
    return str(name), resolve_url(str(url), workspace)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def code_hash(folder: Path) -> str:
    """sha256 over pipeline/'s Python files (relative path and content), bytecode left out."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


class RecordStore:
    """The lineage records of one DVC remote, through DVC's filesystem for its URL."""

    def __init__(self, url: str):
        from dvc.fs import parse_external_url

        self.url = url
        self.fs, self.root = parse_external_url(url)

    def path(self, *parts: str) -> str:
        return self.fs.join(self.root, PREFIX, *parts)

    def _read(self, *parts: str) -> dict | None:
        path = self.path(*parts)
        try:
            return json.loads(self.fs.cat_file(path).decode("utf-8"))
        except FileNotFoundError:
            return None

    def _write(self, record: dict, *parts: str) -> None:
        """Write under a temporary name, then move into place: a reader never sees half a record."""
        path = self.path(*parts)
        self.fs.makedirs(self.fs.parent(path), exist_ok=True)
        tmp = self.fs.join(self.fs.parent(path), f".{self.fs.name(path)}.tmp-{os.getpid()}")
        self.fs.pipe_file(tmp, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        self.fs.mv(tmp, path)

    def day(self, day: str) -> dict | None:
        return self._read(DAYS, f"{day}.json")

    def model(self, model_id: str) -> dict | None:
        return self._read(MODELS, f"{model_id}.json")

    def days(self) -> list[str]:
        folder = self.path(DAYS)
        try:
            names = [self.fs.name(p) for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(n[:-len(".json")] for n in names if n.endswith(".json") and not n.startswith("."))

    def put(self, record: dict) -> None:
        """The model index first, the day last: a day is listed only once its record is complete."""
        self._write(record, MODELS, f"{record['candidate']['model_id']}.json")
        self._write(record, DAYS, f"{record['day']}.json")


def champion_of(record: dict) -> dict | None:
    """The model that served after the record's run: its candidate if promoted, else the parent."""
    if record["promoted"]:
        return {"model_id": record["candidate"]["model_id"], "day": record["day"], "source": "candidate"}
    if record.get("parent"):
        return {"model_id": record["parent"]["model_id"], "day": record["parent"]["day"], "source": "parent"}
    return None


def record_of_model(store: RecordStore, model_id: str) -> dict:
    """The published record whose candidate is `model_id` (so it holds that model's outputs)."""
    record = store.model(model_id)
    if record is None or record["candidate"]["model_id"] != model_id:
        raise LineageError(f"model {model_id} has no published record in {store.url} "
                           "(the run that trained it was never published)")
    return record


def chain(store: RecordStore, model_id: str, limit: int = 10_000) -> tuple[list[dict], str | None]:
    """The records from `model_id` back through its parent champions, newest first.

    Returns the records and, when the chain stops at an unpublished model, that model's id.
    """
    records, seen, current = [], set(), model_id
    while current is not None and current not in seen and len(records) < limit:
        seen.add(current)
        record = store.model(current)
        if record is None or record["candidate"]["model_id"] != current:
            return records, current
        records.append(record)
        current = (record.get("parent") or {}).get("model_id")
    return records, None


def summarize(record: dict) -> dict:
    """The facts `lineage` prints for one run."""
    gate = record.get("gate") or {}
    code = record.get("code") or {}
    return {
        "model_id": record["candidate"]["model_id"],
        "day": record["day"],
        "data_days": record["data"]["days"],
        "params_sha256": record["params"]["sha256"],
        "git_commit": code.get("git_commit"),
        "git_dirty": code.get("git_dirty"),
        "pipeline_sha256": code.get("pipeline_sha256"),
        "estimator": (record.get("estimator") or {}).get("estimator"),
        "estimator_source": (record.get("estimator") or {}).get("source"),
        "gate": gate.get("decision"),
        "gate_reason": gate.get("reason"),
        "promoted": record["promoted"],
        "promotion_reason": (record.get("promotion") or {}).get("reason"),
        "parent": (record.get("parent") or {}).get("model_id"),
        "published_at": record.get("published_at"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the DVC repository whose runs were published")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="MODEL_ID", help="a model id (default: the current champion)")
    which.add_argument("--day", help="YYYY-MM-DD: that day's run and the champion that served after it")
    parser.add_argument("--remote", metavar="URL", help="read the records here (default: params.yaml's remote.url)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(workspace: str | Path, model: str | None = None, day: str | None = None,
        remote: str | None = None) -> dict:
    """The lineage of a model (default: the registry's champion) or of a day's run, from the records."""
    from pipeline.release import champions

    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    url = resolve_url(remote, Path.cwd()) if remote else remote_settings(params, workspace)[1]
    store = RecordStore(url)
    registry_dir = workspace / params["registry"]["dir"]
    serving = champions.current(registry_dir)
    result: dict = {"remote": url, "champion": serving["model_id"] if serving else None}
    tagged = history.day_tags(workspace)
    if day is not None:
        record = store.day(day)
        committed = next((entry for entry in history.run_commits(workspace) if entry["day"] == day), None)
        if record is None and committed is not None:  # not published, but git has the run
            result.update(committed=committed, chain=[], unpublished=None)
            return result
        if record is None:
            known = ", ".join(store.days()) or "none"
            raise LineageError(f"no published record for {day} in {url} (published days: {known}) and no run "
                               f"commit for it in {workspace}'s git history")
        result["run"] = summarize(record)
        after = champion_of(record)
        result["served_after"] = after
        model = after["model_id"] if after else None
        if model is None:
            result["chain"], result["unpublished"] = [], None
            return result
    elif model is None:
        if serving is None:
            raise LineageError(f"the registry {registry_dir} has no champion yet; name --model or --day")
        model = serving["model_id"]
    records, unpublished = chain(store, model)
    if not records:
        raise LineageError(f"model {model} has no published record in {url}")
    result["model"] = model
    result["chain"] = [{**summarize(r), "rolled_back": champions.rolled_back(registry_dir, r["candidate"]["model_id"])}
                       for r in records]
    for item in result["chain"]:  # the day's tag, when it still points at the run that trained the model
        item["git_tag"] = history.day_tag(item["day"]) if tagged.get(item["day"]) == item["git_commit"] else None
    result["unpublished"] = unpublished
    return result


def short(value: str | None, n: int = 12) -> str:
    return value[:n] if value else "none"


def format_text(result: dict) -> list[str]:
    lines = [f"lineage from {result['remote']} (champion now: {result['champion'] or 'none'})"]
    if "committed" in result:
        entry = result["committed"]
        lines.append(f"run of {entry['day']}: not published; committed as {short(entry['sha'])} ({entry.get('outcome')}; "
                     f"gate {entry.get('gate', 'none')}; champion {entry.get('champion')}): git show {short(entry['sha'])}")
    if "run" in result:
        run_ = result["run"]
        lines.append(f"run of {run_['day']}: candidate {run_['model_id']}, gate {run_['gate']} "
                     f"({run_['gate_reason']}), {'promoted' if run_['promoted'] else 'not promoted'}")
        after = result["served_after"]
        lines.append(f"  served after it: {after['model_id'] + ' (' + after['source'] + ')' if after else 'no champion'}")
    for i, item in enumerate(result.get("chain", [])):
        role = "model" if i == 0 else "parent"
        flags = [f for f, on in (("champion", item["model_id"] == result["champion"]),
                                 ("rolled back", item.get("rolled_back"))) if on]
        lines += [
            f"{'  ' * i}{role} {item['model_id']}" + (f" [{', '.join(flags)}]" if flags else ""),
            f"{'  ' * i}  trained on {item['day']}; data days {', '.join(item['data_days'])}",
            f"{'  ' * i}  params {short(item['params_sha256'])}; code git {short(item['git_commit'])}"
            f"{' (dirty)' if item['git_dirty'] else ''}{' (' + item['git_tag'] + ')' if item.get('git_tag') else ''}, "
            f"pipeline/ {short(item['pipeline_sha256'])}",
            f"{'  ' * i}  estimator {item['estimator']} ({item['estimator_source']}); gate {item['gate']}; "
            f"{'promoted' if item['promoted'] else 'not promoted: ' + str(item['promotion_reason'])}",
        ]
    if result.get("unpublished"):
        lines.append(f"  parent {result['unpublished']} has no published record: the chain stops here")
    elif result.get("chain"):
        lines.append(f"{'  ' * len(result['chain'])}(no earlier champion)")
    return lines


def main(args: argparse.Namespace) -> int:
    try:
        day = parse_day(args.day) if args.day else None
        if not (Path(args.workspace) / "params.yaml").is_file():
            raise ValueError(f"{args.workspace} has no params.yaml")
        result = run(args.workspace, model=args.model, day=day, remote=args.remote)
    except ValueError as exc:
        print(f"lineage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LineageError as exc:
        print(f"lineage: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else "\n".join(format_text(result)))
    return 0
