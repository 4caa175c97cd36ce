"""corpus stage: the training window's texts and the day's (query, clicked title) pairs, written for
pretrain (which embeds every text the ranker will read and refreshes the encoder on the day's pairs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.data import window
from pipeline.data.corpus import Corpus, save, window_corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--window", default=None,
                        help="run/train_window.json: the earlier days whose texts are added (default: none)")
    parser.add_argument("--out", required=True, help="output folder: texts.parquet, pairs.parquet")


def run(data_dir: str | Path, day: str, out_dir: str | Path, earlier: list[str] = ()) -> Corpus:
    corpus = window_corpus(data_dir, day, list(earlier))
    with atomic_dir(out_dir) as tmp:
        save(tmp, corpus)
    days = day + (f" and {len(earlier)} earlier day(s)" if earlier else "")
    print(f"corpus: {days}: {len(corpus.texts)} texts ({int(corpus.is_title.sum())} titles, "
          f"{int(corpus.is_query.sum())} queries), {len(corpus.pairs)} (query, clicked title) pairs of {day}")
    return corpus


def main(args: argparse.Namespace) -> int:
    earlier = window.earlier_days(window.read(args.window), args.day) if args.window else []
    run(args.data, args.day, args.out, earlier)
    return 0
