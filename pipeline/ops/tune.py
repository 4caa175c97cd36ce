"""`python -m pipeline tune --day D --grid FILE [--promote]`: a hyperparameter sweep as DVC experiments.

The grid is a YAML mapping of params keys to the values to try (every combination is one experiment):

    train.learning_rate: [0.001, 0.002, 0.004]
    ranker.hidden: [64, 128]

For the day D (whose raw data is in the workspace) the command, holding the workspace's lease:
  1. writes the day's run context (run/: the day, its drift window, the champion before it), as a
     retrain of D would;
  2. queues the sweep: `dvc exp run --queue -S KEY=V1,V2 ... -C data/raw -C registry gate`, that is,
     every experiment runs the retrain up to the gate, on the day's data, against the champion that
     served before it (the raw days and the registry are copied into each experiment's folder, which
     otherwise holds only what git and DVC track); the promote stage is never an experiment's, so an
     experiment cannot touch the champion;
  3. `dvc queue start`s the experiments and waits for them; `dvc exp show` lists them as usual;
  4. prints each experiment's overrides, gate decision and primary metric, and the best blessed one.
With --promote, the best blessed experiment is applied (`dvc exp apply`: its params and outputs
become the workspace's) and the day runs through the normal path, gate and promote stages included,
then is committed like any run (pipeline/release/runs.py): its params are the workspace's from then
on. Nothing is promoted when no experiment was blessed.

Exit codes: 0 swept (and, with --promote, promoted); 1 an experiment failed, or --promote found no
blessed experiment; 2 bad arguments, a bad grid, no data for the day; 4 another run holds the workspace.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.days import parse_day
from pipeline.ops import lease, repro
from pipeline.params import load_params
from pipeline.release import runs
from pipeline.runplan import EXIT_LEASE_HELD, STAGES, dvc_env, missing_inputs

LAST_EXPERIMENT_STAGE = "gate"  # experiments stop before promote: only the normal path promotes
POLL_SECONDS = 2.0
QUEUED = re.compile(r"Queued experiment '([^']+)'")


class TuneError(Exception):
    """The sweep cannot run or did not finish; the message says why."""


def read_grid(path: Path, params: dict) -> dict[str, list]:
    """{params key: values}, each key present in params and each value a scalar."""
    try:
        grid = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be read as a grid ({' '.join(str(exc).split())})") from exc
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{path}: a grid is a YAML mapping of params keys to lists of values")
    for key, values in grid.items():
        node = params
        for part in str(key).split("."):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"{path}: {key} is not a key of params.yaml")
            node = node[part]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: {key} needs a list of values to try")
        if any(isinstance(v, (list, dict)) for v in values):
            raise ValueError(f"{path}: {key}: only single values can be swept (no lists or mappings)")
    return {str(key): values for key, values in grid.items()}


def override(key: str, values: list) -> str:
    """One `-S` sweep override: key=v1,v2 in DVC's (Hydra's) syntax."""
    return f"{key}=" + ",".join(json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool)
                                else "null" if v is None else str(v) for v in values)


def dvc(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # The queue's workers start `dvc`, and the stages `python`, from PATH: this interpreter's first.
    env = {**dvc_env(), "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, env=env, capture_output=True,
                            text=True)
    if check and result.returncode:
        said = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise TuneError(f"dvc {' '.join(args[:3])} failed (exit {result.returncode}): {said}")
    return result


def queue(workspace: Path, grid: dict[str, list], params: dict) -> list[str]:
    copied = ["data/raw", str(params["registry"]["dir"])]
    args = ["exp", "run", "--queue"]
    for key, values in grid.items():
        args += ["-S", override(key, values)]
    for path in copied:
        args += ["-C", path]
    names = QUEUED.findall(dvc(workspace, *args, LAST_EXPERIMENT_STAGE).stdout)
    expected = len(list(itertools.product(*grid.values())))
    if len(names) != expected:
        raise TuneError(f"dvc queued {len(names)} experiments, the grid has {expected}")
    return names


def wait(workspace: Path, names: list[str], jobs: int) -> dict[str, str]:
    """Run the queue and wait for `names`: {name: Success | Failed | ...}."""
    dvc(workspace, "queue", "start", "-j", str(jobs))
    while True:
        states = {}
        for line in dvc(workspace, "queue", "status").stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1] in names:
                states[fields[1]] = fields[-1]
        if len(states) == len(names) and not {"Queued", "Running"} & set(states.values()):
            return states
        time.sleep(POLL_SECONDS)


def results(workspace: Path, names: list[str]) -> list[dict]:
    """Each experiment's overrides, gate decision and primary metric, from `dvc exp show --json`."""
    shown = json.loads(dvc(workspace, "exp", "show", "--json").stdout or "[]")
    found = []
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs") or []:
                if rev.get("name") in names:
                    found.append(summarise(rev))
    return sorted(found, key=lambda r: names.index(r["name"]))


def summarise(rev: dict) -> dict:
    data = rev.get("data") or {}
    metrics = {path: (entry or {}).get("data") or {} for path, entry in (data.get("metrics") or {}).items()}
    evaluated, decision = metrics.get("work/evaluate/metrics.json", {}), metrics.get("work/gate/decision.json", {})
    primary = evaluated.get("primary_metric")
    return {"name": rev.get("name"), "rev": rev.get("rev"),
            "params": ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {},
            "decision": decision.get("decision"), "blessed": bool(decision.get("blessed")),
            "primary_metric": primary, "score": (evaluated.get("candidate") or {}).get(primary)}


def lookup(params: dict, key: str):
    for part in key.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


def best_blessed(found: list[dict]) -> dict | None:
    blessed = [r for r in found if r["blessed"] and r["score"] is not None]
    return max(blessed, key=lambda r: r["score"]) if blessed else None


def promote(workspace: Path, day: str, chosen: dict) -> int:
    """The chosen experiment's params and outputs into the workspace, then the normal path to promote."""
    dvc(workspace, "exp", "apply", chosen["name"])
    code = repro.run_stages(workspace, day, STAGES, runs.BY_HAND)
    return code or repro.record_run(workspace, day, f"tune:{chosen['name']}")


def sweep(workspace: Path, day: str, grid_file: Path, jobs: int, do_promote: bool) -> int:
    params = load_params(workspace / "params.yaml")
    grid = read_grid(grid_file, params)
    if missing := missing_inputs(workspace, day):
        raise ValueError(f"no data for {day} in {workspace}: {', '.join(missing)} missing")
    repro.prepare(workspace, day, params)
    names = queue(workspace, grid, params)
    print(f"tune: {len(names)} experiments queued on {day}: {', '.join(names)}")
    states = wait(workspace, names, jobs)
    # A failed experiment's row in `dvc exp show` carries its baseline's metrics: not its own.
    found = results(workspace, [name for name in names if states.get(name) == "Success"])
    for entry in found:
        values = ", ".join(f"{key}={lookup(entry['params'], key)}" for key in grid)
        print(f"  {entry['name']:16s} {values:40s} {entry['decision'] or states.get(entry['name'])} "
              f"{entry['primary_metric']}={entry['score']}")
    failed = [name for name, state in states.items() if state != "Success"]
    if failed:
        print(f"tune: {', '.join(failed)} failed: `dvc queue logs NAME` says why", file=sys.stderr)
    chosen = best_blessed(found)
    if chosen is None:
        print("tune: no experiment was blessed by the gate: nothing to promote", file=sys.stderr)
        return 1 if do_promote or failed else 0
    print(f"tune: best blessed: {chosen['name']} ({chosen['primary_metric']}={chosen['score']})")
    if not do_promote:
        print(f"  to promote it: python -m pipeline tune ... --promote, or dvc exp apply {chosen['name']} "
              f"and python -m pipeline repro --day {day}")
        return 1 if failed else 0
    return promote(workspace, day, chosen)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the workspace (a DVC repository with the day's raw data)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD: the day every experiment trains and is gated on")
    parser.add_argument("--grid", required=True, type=Path, help="YAML: params key -> list of values to try")
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at once (dvc queue start -j)")
    parser.add_argument("--promote", action="store_true",
                        help="apply the best blessed experiment and run the day through gate and promote")


def main(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace).resolve()
    try:
        day = parse_day(args.day)
        if not (workspace / ".dvc").is_dir() or not (workspace / "dvc.yaml").is_file():
            raise ValueError(f"{workspace} is not a DVC workspace with a dvc.yaml")
        params = load_params(workspace / "params.yaml")
    except ValueError as exc:
        print(f"tune: {exc}", file=sys.stderr)
        return 2
    holder = lease.command_holder()
    waits = lease.acquire(workspace, holder, day, stale_after=lease.stale_after(params), queue=False)
    if waits is not None:
        print(f"tune: the workspace is busy: {waits}", file=sys.stderr)
        return EXIT_LEASE_HELD
    try:
        return sweep(workspace, day, args.grid, args.jobs, args.promote)
    except ValueError as exc:
        print(f"tune: {exc}", file=sys.stderr)
        return 2
    except TuneError as exc:
        print(f"tune: {exc}", file=sys.stderr)
        return 1
    finally:
        lease.release(workspace, holder)
