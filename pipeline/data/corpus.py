"""corpus stage: the day's text corpus, the only input of the encoder refresh.

work/corpus/
  texts.parquet   text, title, query: every unique catalog title and search query, sorted
  pairs.parquet   query, title: every distinct (query, clicked item's title) pair of the day, sorted

Pretrain reads this folder instead of the raw day, so a day with the same texts and pairs gives
byte-identical files and DVC serves the refresh from its run cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.contract import ContractError, DayPaths, impression_parts, read_catalog

TEXTS_FILE = "texts.parquet"
PAIRS_FILE = "pairs.parquet"
TEXTS_SCHEMA = pa.schema([("text", pa.string()), ("title", pa.bool_()), ("query", pa.bool_())])
PAIRS_SCHEMA = pa.schema([("query", pa.string()), ("title", pa.string())])


@dataclass
class Corpus:
    texts: list[str]               # sorted, unique
    is_title: np.ndarray           # bool per text: a catalog title
    is_query: np.ndarray           # bool per text: a search query (a text may be both)
    pairs: list[tuple[str, str]]   # (query, clicked item's title), sorted, distinct

    @property
    def titles(self) -> list[str]:
        return [t for t, flag in zip(self.texts, self.is_title) if flag]


def _non_empty(values) -> set[str]:
    values = pc.drop_null(values)
    return set(pc.filter(values, pc.greater(pc.utf8_length(values), 0)).to_pylist())


def from_tables(impressions: pa.Table, catalog: pd.DataFrame) -> Corpus:
    """The corpus of impressions (query, item_id, clicked) and the day's catalog (item_id, title)."""
    titles = _non_empty(pa.array(catalog["title"], type=pa.string()))
    queries = _non_empty(impressions["query"])
    texts = sorted(titles | queries)
    is_title = np.fromiter((t in titles for t in texts), dtype=bool, count=len(texts))
    is_query = np.fromiter((t in queries for t in texts), dtype=bool, count=len(texts))
    # Arrow filters and group-by: no Python string per impression, only per distinct pair.
    searched = pc.fill_null(pc.greater(pc.utf8_length(impressions["query"]), 0), False)
    clicked = impressions.filter(pc.and_(pc.equal(impressions["clicked"], 1), searched))
    distinct = clicked.group_by(["query", "item_id"]).aggregate([]).to_pandas()
    title_of = catalog.drop_duplicates("item_id").set_index("item_id")["title"]
    distinct["title"] = distinct["item_id"].map(title_of)
    found = distinct[distinct["title"].notna() & (distinct["title"].str.len() > 0)]
    pairs = sorted(set(zip(found["query"], found["title"])))
    return Corpus(texts, is_title, is_query, pairs)


def _day_table(data_dir: str | Path, day: str) -> pa.Table:
    """query (as strings), item_id and clicked of a day's impressions."""
    parts = impression_parts(DayPaths(Path(data_dir), day))
    try:
        tables = [pq.read_table(p, columns=["query", "item_id", "clicked"]) for p in parts]
    except (OSError, pa.ArrowException) as exc:
        raise ContractError(f"{DayPaths(Path(data_dir), day).impressions_dir}: cannot read query, item_id "
                            f"and clicked ({exc})") from exc
    table = pa.concat_tables(tables, promote_options="permissive")
    # A recommend-only day may store `query` as Arrow's null type, which has no string kernels.
    query = table.schema.get_field_index("query")
    return table.set_column(query, "query", table["query"].cast(pa.string()))


def day_corpus(data_dir: str | Path, day: str) -> Corpus:
    """The corpus of one day of the raw log (DATA_CONTRACT.md layout)."""
    return from_tables(_day_table(data_dir, day), read_catalog(data_dir, day))


def window_corpus(data_dir: str | Path, day: str, earlier: list[str]) -> Corpus:
    """The day's corpus with the titles and queries of the `earlier` days added to its texts (the ranker
    trains on their rows, so pretrain embeds their texts too); the pairs stay the day's own."""
    corpus = day_corpus(data_dir, day)
    titles, queries = set(corpus.titles), {t for t, flag in zip(corpus.texts, corpus.is_query) if flag}
    for other in earlier:
        titles |= _non_empty(pa.array(read_catalog(data_dir, other)["title"], type=pa.string()))
        queries |= _non_empty(_day_table(data_dir, other)["query"])
    texts = sorted(titles | queries)
    return Corpus(texts, np.fromiter((t in titles for t in texts), dtype=bool, count=len(texts)),
                  np.fromiter((t in queries for t in texts), dtype=bool, count=len(texts)), corpus.pairs)


def save(directory: str | Path, corpus: Corpus) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    texts = pa.table({"text": corpus.texts, "title": corpus.is_title.tolist(), "query": corpus.is_query.tolist()},
                     schema=TEXTS_SCHEMA)
    pairs = pa.table({"query": [q for q, _ in corpus.pairs], "title": [t for _, t in corpus.pairs]},
                     schema=PAIRS_SCHEMA)
    # No pandas metadata: the bytes depend on the content only (DVC's run cache compares hashes).
    pq.write_table(texts, directory / TEXTS_FILE)
    pq.write_table(pairs, directory / PAIRS_FILE)


def load(directory: str | Path) -> Corpus:
    directory = Path(directory)
    tables = {}
    for name, schema in ((TEXTS_FILE, TEXTS_SCHEMA), (PAIRS_FILE, PAIRS_SCHEMA)):
        path = directory / name
        if not path.is_file():
            raise ContractError(f"{path}: missing (write it with `python -m pipeline corpus`)")
        table = pq.read_table(path)
        missing = [f.name for f in schema if f.name not in table.column_names]
        if missing:
            raise ContractError(f"{path}: no column(s) {', '.join(missing)}")
        tables[name] = table.select(schema.names).cast(schema)
    texts = tables[TEXTS_FILE]
    pairs = tables[PAIRS_FILE]
    return Corpus(texts["text"].to_pylist(), texts["title"].to_numpy(zero_copy_only=False).astype(bool),
                  texts["query"].to_numpy(zero_copy_only=False).astype(bool),
                  list(zip(pairs["query"].to_pylist(), pairs["title"].to_pylist())))
