"""rollback: put the previous champion (or a named promoted model) back in service.

The same atomic pointer switch as promote; the rolled-back model stays in registry/models and the
history records the switch, so a second rollback goes one further back.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.params import load_params
from pipeline.release import champions

# Exit codes: the registry cannot go back (nothing earlier, already serving) vs. an unknown model id.
EXIT_REFUSED = 1
EXIT_UNKNOWN = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params.yaml naming registry.dir")
    parser.add_argument("--to", metavar="MODEL_ID",
                        help="restore this promoted model (default: the champion before the current one)")
    parser.add_argument("--reason", help="why, recorded in the history")


def run(params: dict, to: str | None = None, reason: str | None = None) -> dict:
    return champions.rollback(params["registry"]["dir"], to=to, reason=reason)


def main(args: argparse.Namespace) -> int:
    try:
        event = run(load_params(args.params), args.to, args.reason)
    except champions.RollbackError as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN if isinstance(exc, champions.UnknownModel) else EXIT_REFUSED
    print(f"rollback: {event['previous']} (trained on {event['previous_day']}) -> "
          f"{event['model_id']} (trained on {event['day']}) at {event['rolled_back_at']}")
    return 0
