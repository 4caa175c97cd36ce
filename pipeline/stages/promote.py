"""promote stage: switch the champion pointer to the candidate, only when the gate blessed it."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.atomic import atomic_dir, read_json, write_json_atomic
from pipeline.params import load_params
from pipeline.release import champions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decision", required=True, help="decision.json written by gate")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD the candidate was trained on")
    parser.add_argument("--encoder", required=True, help="candidate encoder folder (pretrain output)")
    parser.add_argument("--model", required=True, help="candidate ranker folder (train output)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: promotion.json")


def decide(registry_dir, day: str, decision: dict, encoder_dir: Path, model_dir: Path) -> dict:
    live = champions.current(registry_dir)
    if not decision["blessed"]:
        return {"promoted": False, "reason": f"gate: {decision['reason']}"}
    if live is not None and live["day"] > day:
        # A backfilled day never replaces a champion trained on newer data.
        return {"promoted": False, "reason": f"champion {live['model_id']} was trained on a later day"}
    candidate_id = champions.model_id_for(day, encoder_dir, model_dir)
    # A rerun of the run that promoted it: the same outcome, and no second promotion in the history.
    if live is None or live["model_id"] != candidate_id:
        if champions.rolled_back(registry_dir, candidate_id):
            # A rerun that rebuilds a withdrawn model must not undo the rollback behind the operator's back.
            return {"promoted": False, "reason": f"model {candidate_id} was rolled back; "
                                                 f"`python -m pipeline rollback --to {candidate_id}` restores it"}
        champions.promote(registry_dir, day, encoder_dir, model_dir)
    return {"promoted": True, "model_id": candidate_id, "reason": "blessed by the gate"}


def run(decision_file, day: str, encoder_dir, model_dir, out_dir, params: dict) -> dict:
    outcome = decide(params["registry"]["dir"], day, read_json(decision_file), Path(encoder_dir), Path(model_dir))
    outcome["day"] = day
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "promotion.json", outcome)
    print(f"promote: {day} {'promoted ' + outcome['model_id'] if outcome['promoted'] else 'not promoted'}"
          f" ({outcome['reason']})")
    return outcome


def main(args: argparse.Namespace) -> int:
    run(args.decision, args.day, args.encoder, args.model, args.out, load_params(args.params))
    return 0
