"""`python -m pipeline <command> ...`: one sub-command per stage, plus the tools around them."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> module holding `add_arguments(parser)` and `main(args) -> int`
COMMANDS = {
    "init": ("pipeline.ops.workspace", "make a workspace (git + DVC, params, dvc.yaml) for your own data"),
    "simulate": ("pipeline.data.simulate.command", "write simulated logs in the data contract's layout"),
    "ingest": ("pipeline.data.ingest.command", "bring your own logs (Parquet or CSV) into the data contract's layout"),
    "validate": ("pipeline.stages.validate", "check one day against the data contract (Great Expectations)"),
    "corpus": ("pipeline.stages.corpus", "collect the day's texts and (query, clicked title) pairs for pretrain"),
    "pretrain": ("pipeline.stages.pretrain", "refresh the text encoder on the day's texts and embed them"),
    "importance": ("pipeline.stages.importance", "score every impression and turn scores into weights"),
    "train": ("pipeline.stages.train", "train the ranker with the importance weights"),
    "evaluate": ("pipeline.stages.evaluate", "score candidate and champion on the held-out slice"),
    "gate": ("pipeline.stages.gate", "bless or reject the candidate against the champion"),
    "promote": ("pipeline.stages.promote", "switch the champion pointer when the candidate is blessed"),
    "score": ("pipeline.ops.score", "score every impression of a day with the champion (or a named model) to Parquet"),
    "rollback": ("pipeline.release.rollback", "put the previous champion (or a named promoted model) back in service"),
    "benchmark": ("pipeline.importance.benchmark.run", "compare the importance estimators on injected noise and pick one"),
    "select": ("pipeline.ops.select", "benchmark the recent days and make the winner the retrain's estimator"),
    "tune": ("pipeline.ops.tune", "sweep params as DVC experiments on a day, gated; promote the best blessed one"),
    "repro": ("pipeline.ops.repro", "run one DVC stage of the retrain for a given day"),
    "lease": ("pipeline.ops.lease", "show which run holds a workspace, or break a dead run's lease"),
    "summary": ("pipeline.ops.summary", "print where a run's reports, metrics and decision are"),
    "commit": ("pipeline.release.runs", "commit the workspace's last run to its git repository and tag its day"),
    "publish": ("pipeline.release.publish", "push a finished run's outputs and lineage record to the DVC remote"),
    "restore": ("pipeline.release.restore", "restore a day's champion model and reports from the DVC remote alone"),
    "lineage": ("pipeline.release.lineage", "print a model's or a day's lineage: data, params, code, parent champions"),
}


def usage() -> str:
    lines = ["usage: python -m pipeline <command> [options]   (python -m pipeline <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:11s} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        print((f"unknown command {argv[0]!r}\n" if argv else "") + usage(), file=sys.stderr)
        return 2
    # Import only the chosen command's module: stages pull in torch or GX, which are slow to load.
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {argv[0]}", description=help_text)
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
