"""gate stage: bless or reject the candidate from evaluate's metrics (the rules: pipeline/release/gate.py).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.atomic import atomic_dir, read_json, write_json_atomic
from pipeline.params import load_params
from pipeline.release.gate import RANKING_KEYS, decide


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, help="metrics.json written by evaluate")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: decision.json and blessing (BLESSED or NOT_BLESSED)")


def run(metrics_file, out_dir, params: dict) -> dict:
    cfg = params.get("gate") or {}
    for key in ("checks", "min_slice_rows"):
        if key not in cfg:
            raise KeyError(f"gate.{key} is missing from params")
    # The ranking rules apply when the gate section sets any of them (every one is then required).
    ranking = {key: cfg[key] for key in RANKING_KEYS if key in cfg} or None
    decision = decide(read_json(metrics_file), cfg["checks"], cfg.get("slice_checks"), cfg["min_slice_rows"],
                      ranking, cfg.get("min_clicks"), cfg.get("min_purchases"))
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "decision.json", decision)
        # TFX-style marker with a fixed name, so DVC can track it: BLESSED, NOT_BLESSED or NOT_ENOUGH_EVIDENCE.
        (tmp / "blessing").write_text(decision["decision"] + "\n")
    print(f"gate: {decision['decision']}: {decision['reason']}")
    return decision


def main(args: argparse.Namespace) -> int:
    try:
        run(args.metrics, args.out, load_params(args.params))
    except (KeyError, ValueError) as exc:
        # A misconfigured gate decides nothing: one line naming the problem, no decision written.
        print(f"gate: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0
