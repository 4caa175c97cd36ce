"""corpus stage: the day's texts and (query, clicked title) pairs, written for pretrain.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.data.corpus import Corpus, day_corpus, save


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--out", required=True, help="output folder: texts.parquet, pairs.parquet")


def run(data_dir: str | Path, day: str, out_dir: str | Path) -> Corpus:
    corpus = day_corpus(data_dir, day)
    with atomic_dir(out_dir) as tmp:
        save(tmp, corpus)
    print(f"corpus: {day} {len(corpus.texts)} texts ({int(corpus.is_title.sum())} titles, "
          f"{int(corpus.is_query.sum())} queries), {len(corpus.pairs)} (query, clicked title) pairs")
    return corpus


def main(args: argparse.Namespace) -> int:
    run(args.data, args.day, args.out)
    return 0
