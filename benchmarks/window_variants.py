"""Train knobs compared on the same day, the same encoder and importance: which differences are more than noise.

    python benchmarks/window_variants.py --source /tmp/training_window/window-7 --days 2026-11-03,2026-11-04 \
        [--variants one=train.window_days:1,flat=train.window_decay:1.0,seed=seed:7] [--reference one] \
        [--work DIR] [--out benchmarks/results/window_variants.json]

`--source` is a workspace of benchmarks/training_window.py. For each day it committed, the day's state
(its commit, the outputs restored from the source's DVC cache, the source's raw data and registry) is
cloned into --work with this checkout's package. Every variant (NAME=KNOB:VALUE;KNOB:VALUE, a knob a
params key, dotted such as `ranker.ids.buckets`; a value YAML, a list too) runs the train stage and then
evaluate, as the DAG runs them, beside `state`, the model the source trained that day. The score is
NDCG@10 against the simulator's true relevance on the day's held-out rows, and each model's difference
from `--reference` comes with a 95 % interval from a paired bootstrap over the held-out requests (the
same resamples for every model).
A seed variant measures how far two fits of the same knobs land apart: the noise any other difference is
read against. Prints a table per day and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from training_window import committed_days  # this folder: the workspaces it reads are that script's

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.data.window import calendar_days  # noqa: E402

BIN = Path(sys.executable).parent
RESAMPLES = 1000


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def parse_variants(text: str) -> dict[str, dict]:
    variants = {}
    # A comma starts the next variant only where NAME= follows, so a value may be a YAML list: [a, b].
    for item in filter(None, re.split(r",(?=\s*[\w-]+=)", text)):
        name, _, knobs = item.partition("=")
        variants[name] = {key: yaml.safe_load(value) for key, _, value in
                          (knob.partition(":") for knob in knobs.split(";") if knob)}
    return variants


def day_state(source: Path, work: Path, day: str) -> Path:
    """The source workspace as its commit of `day` left it, with this checkout's package."""
    here = work / day
    if here.exists():
        return here
    commit = committed_days(source).get(day)
    if commit is None:
        raise SystemExit(f"{source} has not committed {day}")
    run(["git", "clone", "-q", str(source), str(here)], work)
    run(["git", "checkout", "-q", commit], here)
    run([str(BIN / "dvc"), "cache", "dir", str(source / ".dvc" / "cache")], here)
    (here / "data").mkdir(exist_ok=True)
    os.symlink(source / "data" / "raw", here / "data" / "raw")
    os.symlink(source / "registry", here / "registry")
    run([str(BIN / "dvc"), "checkout", "-q"], here)
    shutil.rmtree(here / "pipeline")
    shutil.copytree(ROOT / "pipeline", here / "pipeline")
    return here


def train_variant(here: Path, day: str, name: str, knobs: dict) -> Path:
    """The variant's model, trained (and evaluated, as the gate would see it) once."""
    out = here / "variants" / name
    if (out / "evaluate" / "metrics.json").is_file():
        return out / "train" / "model"
    params = yaml.safe_load((here / "params.yaml").read_text())
    for key, value in knobs.items():
        *sections, knob = key.split(".")
        node = params
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        # A misspelt knob would otherwise train the unchanged model under the variant's name.
        if not isinstance(node, dict) or knob not in node:
            raise SystemExit(f"variant {name}: {key} is not a key of {here / 'params.yaml'}")
        node[knob] = value
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The train stage reads its days from the window file repro wrote, not from the knob: narrow it here.
    window = json.loads((here / "run" / "train_window.json").read_text())
    size = params["train"]["window_days"]
    inside = set(calendar_days(day, size))
    window.update(window_days=size, days=[d for d in window["days"] if d in inside],
                  earlier=[e for e in window["earlier"] if e["day"] in inside],
                  left_out=[e for e in window["left_out"] if e["day"] in inside])
    (out / "train_window.json").write_text(json.dumps(window))
    shared = ["--data", "data/raw", "--day", day, "--embeddings", "work/pretrain/embeddings",
              "--encoder", "work/pretrain/encoder", "--baseline", "run/baseline.json", "--params",
              str(out / "params.yaml")]
    run([sys.executable, "-m", "pipeline", "train", *shared, "--window", str(out / "train_window.json"),
         "--weights", "work/importance", "--out", str(out / "train")], here)
    run([sys.executable, "-m", "pipeline", "evaluate", *shared, "--model", str(out / "train" / "model"),
         "--window", "run/window.json", "--out", str(out / "evaluate")], here)
    return out / "train" / "model"


def compare(here: Path, day: str, models: dict[str, Path], reference: str) -> dict:
    """Each model's true NDCG@10 on the day's held-out requests, and its paired difference from `reference`,
    scored as evaluate scores the candidate (the same held-out rows, features and tie-breaking)."""
    from pipeline.model import baselines, ranker
    from pipeline.model import metrics as m
    from pipeline.model.dataset import load_day
    from pipeline.model.evaluation import Scorer
    from pipeline.params import stage_seed

    params = yaml.safe_load((here / "params.yaml").read_text())
    raw = here / "data" / "raw"
    data = load_day(raw, day, here / "work" / "pretrain" / "embeddings", params)
    rows = data.holdout_index
    held_out = data.impressions.iloc[rows].reset_index(drop=True)
    relevance = baselines.true_relevance(held_out, baselines.read_truth(raw, day))
    scorer = Scorer(held_out, params["evaluate"], relevance, None, stage_seed(params, "evaluate_ties"))
    x = data.x.subset(rows)
    per_request = {}
    for name, path in models.items():
        predicted = ranker.predict(ranker.load(path), x, "cpu", with_position=True)
        per_request[name] = scorer.per_request(scorer.ranks(predicted["score"]))[scorer.true_name]
    counts = m.bootstrap_counts(scorer.n_groups, RESAMPLES, stage_seed(params, "evaluate_bootstrap"))
    return {"day": day, "requests": scorer.n_groups,
            "ndcg": {name: round(float(np.nanmean(v)), 6) for name, v in per_request.items()},
            "paired": {name: m.paired_group_interval(v, per_request[reference], counts, 0.95)
                       for name, v in per_request.items() if name != reference}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a workspace of training_window.py")
    parser.add_argument("--days", required=True, help="comma-separated days the source committed")
    parser.add_argument("--variants", default="one=train.window_days:1,one_seed=train.window_days:1;seed:7,"
                                               "flat=train.window_decay:1.0,flat_seed=train.window_decay:1.0;seed:7")
    parser.add_argument("--reference", default="one", help="the variant (or `state`) differences are taken from")
    parser.add_argument("--work", type=Path, default=Path("/tmp/window_variants"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "window_variants.json")
    args = parser.parse_args()
    variants = parse_variants(args.variants)
    args.work.mkdir(parents=True, exist_ok=True)
    records = []
    for day in args.days.split(","):
        here = day_state(args.source.resolve(), args.work.resolve(), day)
        models = {"state": here / "work" / "train" / "model"}
        models.update({name: train_variant(here, day, name, knobs) for name, knobs in variants.items()})
        record = compare(here, day, models, args.reference)
        records.append(record)
        print(f"{day} ({record['requests']} requests): " + "; ".join(
            f"{name} {value:.4f}" + ("" if name == args.reference else
                                     " ({diff:+.4f} [{lower:+.4f}, {upper:+.4f}])".format(**record["paired"][name]))
            for name, value in record["ndcg"].items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"source": str(args.source), "variants": variants, "reference": args.reference,
                                    "resamples": RESAMPLES, "machine": platform.platform(), "days": records},
                                   indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
