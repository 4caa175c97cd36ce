"""A corpus of broken days, each breaking one contract rule or one file property. Each is rejected at
validation with its own message: every case through the validate stage in-process (the message is the
line the retrain prints), and one case of each kind (a GX rule, a cross-table rule, an unreadable file,
a missing table) through the retrain command every Airflow task runs, where the champion pointer stays
byte-identical and no later stage runs."""
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import DAY, make_workspace, repro, simulate, tiny_params
from pipeline.data.contract import ContractError, DayPaths, impression_parts
from pipeline.ops.repro import rejection_message
from pipeline.release import champions
from pipeline.runplan import EXIT_DATA_REJECTED, REJECTION_PREFIX, validate_dir
from pipeline.stages import validate

pytestmark = pytest.mark.slow


def rewrite(path, fn, keep_schema=True):
    table = pq.read_table(path)
    frame = fn(table.to_pandas())
    schema = table.schema if keep_schema else None
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def impressions(fn, keep_schema=True):
    return lambda paths: rewrite(impression_parts(paths)[0], fn, keep_schema)


def catalog(fn):
    return lambda paths: rewrite(paths.catalog_file, fn)


def first_row(column, value, where=lambda f: f.index == f.index):
    def edit(frame):
        frame.loc[frame.index[where(frame)][0], column] = value
        return frame
    return edit


def search(frame):
    return frame["surface"] == "search"


def recommend(frame):
    return frame["surface"] == "recommend"


def unclicked(frame):
    return frame["clicked"] == 0


def duplicate_event_id(frame):
    frame.loc[frame.index[1], "event_id"] = frame.loc[frame.index[0], "event_id"]
    return frame


def duplicate_position(frame):
    second = frame.index[frame["position"] == 2][0]
    frame.loc[second, "position"] = 1
    return frame


def as_text(column):
    def edit(frame):
        frame[column] = frame[column].astype(str)
        return frame
    return edit


def naive_ts(frame):
    frame["ts"] = frame["ts"].dt.tz_localize(None)
    return frame


def extra_column(frame):
    frame["debug_flag"] = 1
    return frame


def truncate(paths):
    part = impression_parts(paths)[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def not_parquet(paths):
    impression_parts(paths)[0].write_text("event_id,ts\ne1,2026-11-01\n")


def no_catalog(paths):
    paths.catalog_file.unlink()


CORPUS = {
    "missing column": (impressions(lambda f: f.drop(columns=["clicked"]), keep_schema=False),
                       ["expect_column_to_exist(clicked)"]),
    "duplicated event_id": (impressions(duplicate_event_id), ["expect_column_values_to_be_unique(event_id)"]),
    "null event_id": (impressions(first_row("event_id", None)), ["expect_column_values_to_not_be_null(event_id)"]),
    "null session_id": (impressions(first_row("session_id", None)),
                        ["expect_column_values_to_not_be_null(session_id)"]),
    "purchase without click": (impressions(first_row("purchased", 1, unclicked)), ["(clicked, purchased)"]),
    "item not in catalog": (impressions(first_row("item_id", "i999999")), ["(item_id, catalog.item_id)"]),
    "ts outside the day": (impressions(first_row("ts", pd.Timestamp("2026-11-03 08:00", tz="UTC"))),
                           ["expect_column_values_to_be_between(ts)"]),
    "search without query": (impressions(first_row("query", None, search)),
                             ["expect_column_values_to_not_be_null(query where surface == 'search')"]),
    "empty search query": (impressions(first_row("query", "", search)),
                           ["expect_column_values_to_match_regex(query where surface == 'search')"]),
    "query on a recommendation": (impressions(first_row("query", "shoes", recommend)),
                                  ["expect_column_values_to_be_null(query where surface == 'recommend')"]),
    "position repeated in a request": (impressions(duplicate_position), ["(request_id, position)"]),
    "position 0": (impressions(first_row("position", 0)), ["expect_column_values_to_be_between(position)"]),
    "propensity 0": (impressions(first_row("propensity", 0.0)), ["expect_column_values_to_be_between(propensity)"]),
    "negative price": (impressions(first_row("price", -5.0)), ["impressions: expect_column_values_to_be_between(price)"]),
    "e-mail as user_id": (impressions(first_row("user_id", "jane.doe@example.com")), ["(user_id)"]),
    "unknown surface": (impressions(first_row("surface", "email")), ["expect_column_values_to_be_in_set(surface)"]),
    "clicked is 2": (impressions(first_row("clicked", 2)), ["expect_column_values_to_be_in_set(clicked)"]),
    "clicked as text": (impressions(as_text("clicked"), keep_schema=False), ["expect_column_type_to_be(clicked)"]),
    "ts without time zone": (impressions(naive_ts, keep_schema=False), ["expect_column_type_to_be(ts)"]),
    "undeclared extra column": (impressions(extra_column, keep_schema=False), ["extra columns must start with f_"]),
    "empty day": (impressions(lambda f: f.iloc[0:0]), ["expect_table_row_count_to_be_between(rows)"]),
    "catalog item twice": (catalog(lambda f: pd.concat([f, f.iloc[:1]])),
                           ["catalog: expect_column_values_to_be_unique(item_id)"]),
    "catalog title empty": (catalog(first_row("title", "")), ["catalog: expect_column_values_to_match_regex(title)"]),
    "catalog missing": (no_catalog, ["catalog", "missing"]),
    "truncated parquet": (truncate, ["part-00000.parquet", "cannot be read as Parquet"]),
    "text file named .parquet": (not_parquet, ["part-00000.parquet", "cannot be read as Parquet"]),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A workspace with a clean tiny day and a champion from the day before."""
    workspace = make_workspace(tmp_path_factory.mktemp("corpus") / "ws")
    simulate(workspace, DAY)
    shutil.copytree(workspace / "data", workspace.parent / "pristine-data")
    old = workspace.parent / "old-model"
    for sub in ("encoder", "ranker"):
        (old / sub).mkdir(parents=True)
        (old / sub / "config.json").write_text("{}")
    champions.promote(workspace / "registry", "2026-10-31", old / "encoder", old / "ranker")
    return workspace


def restore(workspace):
    shutil.rmtree(workspace / "data")
    shutil.copytree(workspace.parent / "pristine-data", workspace / "data")


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("case", list(CORPUS))
def test_broken_day_is_rejected_at_validation_with_its_own_message(pristine, tmp_path, case):
    breaker, expected = CORPUS[case]
    shutil.copytree(pristine.parent / "pristine-data", tmp_path / "data")
    breaker(DayPaths(tmp_path / "data/raw", DAY))
    try:
        outcome = validate.run(tmp_path / "data/raw", DAY, validate_dir(tmp_path, DAY), tiny_params())
        assert not outcome.success
    except ContractError:
        pass  # an unreadable table: the stage wrote its verdict, then failed
    message = rejection_message(tmp_path, DAY)  # what the retrain prints after REJECTION_PREFIX
    assert message is not None
    for words in expected:
        assert words in message, message


# One case of each kind through the retrain command.
THROUGH_THE_RETRAIN = ["duplicated event_id", "item not in catalog", "truncated parquet", "catalog missing"]


@pytest.mark.parametrize("case", THROUGH_THE_RETRAIN)
def test_broken_day_stops_the_retrain_and_leaves_the_champion(pristine, case):
    breaker, expected = CORPUS[case]
    restore(pristine)
    breaker(DayPaths(pristine / "data/raw", DAY))
    pointer = pristine / "registry/champion.json"
    before = pointer.read_bytes()

    result = repro(pristine, DAY, check=False)

    assert result.returncode == EXIT_DATA_REJECTED, result.stdout + result.stderr
    reason = [line for line in result.stderr.splitlines() if line.startswith(REJECTION_PREFIX)]
    assert len(reason) == 1
    for words in expected:
        assert words in reason[0], reason[0]
    assert pointer.read_bytes() == before
    assert not (pristine / "work/pretrain").exists() and not (pristine / "work/promote").exists()
    lock = pristine / "dvc.lock"
    assert not lock.exists() or "pretrain" not in yaml.safe_load(lock.read_text())["stages"]


def test_a_day_that_has_not_landed_is_retryable_not_rejected(pristine):
    restore(pristine)
    shutil.rmtree(DayPaths(pristine / "data/raw", DAY).impressions_dir)
    result = repro(pristine, DAY, check=False)
    assert result.returncode == 1
    assert f"no data for {DAY} yet" in result.stderr
