"""`python -m pipeline <command> ...`: one sub-command per stage, plus the tools around them."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> module holding `add_arguments(parser)` and `main(args) -> int`
COMMANDS = {
    "simulate": ("pipeline.simulate", "write simulated logs in the data contract's layout"),
    "validate": ("pipeline.validate", "check one day against the data contract (Great Expectations)"),
    "pretrain": ("pipeline.pretrain", "refresh the text encoder on the day's texts and embed them"),
    "importance": ("pipeline.importance.stage", "score every impression and turn scores into weights"),
    "train": ("pipeline.train", "train the ranker with the importance weights"),
    "evaluate": ("pipeline.evaluate", "score candidate and champion on the held-out slice"),
    "gate": ("pipeline.gate", "bless or reject the candidate against the champion"),
    "promote": ("pipeline.promote", "switch the champion pointer when the candidate is blessed"),
    "repro": ("pipeline.repro", "run one DVC stage of the retrain for a given day"),
    "summary": ("pipeline.summary", "print where a run's reports, metrics and decision are"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the chosen command's module: stages pull in torch or GX, which are slow to load.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        parser = argparse.ArgumentParser(prog=f"python -m pipeline {argv[0]}",
                                         description=COMMANDS[argv[0]][1])
        module.add_arguments(parser)
        return int(module.main(parser.parse_args(argv[1:])) or 0)
    build_parser().parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
