"""The log's optional f_* columns as ranker inputs: read from the parts that have them, numbers
standardized with a missing flag, strings hashed into embeddings, and models that still score rows
lacking a column they were trained with."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.model import ranker
from pipeline.data.contract import IMPRESSION_SCHEMA, DayPaths, read_impressions_of_days
from pipeline.model.features import DENSE_FEATURES, Features, extra_columns

CFG = {"hidden": 8, "max_position": 5, "dropout": 0.0, "extra": {"features": "auto", "buckets": 64, "dim": 4}}
TRAIN = {"batch_size": 256, "learning_rate": 0.01, "weight_decay": 0.0}


def impressions(n: int, **extra) -> pd.DataFrame:
    frame = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)], "ts": pd.Timestamp("2026-11-01", tz="UTC"),
        "request_id": "r1", "user_id": "u1", "session_id": "s1", "surface": "search", "query": "q",
        "item_id": "i1", "position": 1, "clicked": 0, "purchased": 0, "propensity": 0.5, "price": 9.99})
    return frame.assign(**extra)


def write_part(root, name: str, frame: pd.DataFrame) -> None:
    folder = DayPaths(root, "2026-11-01").impressions_dir
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / name)


def test_f_columns_are_read_from_every_part_and_null_where_a_part_lacks_one(tmp_path):
    write_part(tmp_path, "part-00000.parquet", impressions(3, f_device=["mobile", "tablet", None], f_age=[1, 2, 3]))
    write_part(tmp_path, "part-00001.parquet", impressions(2, f_age=[4.5, np.inf]))
    plain = read_impressions_of_days(tmp_path, ["2026-11-01"])
    assert list(plain.columns) == IMPRESSION_SCHEMA.names
    log = read_impressions_of_days(tmp_path, ["2026-11-01"], extra_features=True)
    numeric_names, numeric, categorical_names, hashes = extra_columns(log)
    assert numeric_names == ["f_age"] and categorical_names == ["f_device"]
    assert np.array_equal(numeric[:, 0], [1, 2, 3, 4.5, np.nan], equal_nan=True)  # inf counts as missing
    assert hashes[0, 0] != hashes[1, 0] and (hashes[:2, 0] > 0).all() and (hashes[2:, 0] == 0).all()


def synthetic(n: int, seed: int) -> Features:
    """Clicks driven by one numeric and one string f_* column only; text and dense inputs are noise."""
    g = torch.Generator().manual_seed(seed)
    tenure = torch.randn(n, generator=g) * 300 + 400  # far from unit scale, as raw logs are
    device = torch.randint(1, 4, (n,), generator=g) * 104729  # three hashed values
    logit = 1.5 * (tenure - 400) / 300 + torch.where(device == 2 * 104729, 1.5, -1.0)
    return Features(query=torch.randn(n, 6, generator=g), title=torch.randn(n, 6, generator=g),
                    dense=torch.randn(n, len(DENSE_FEATURES), generator=g),
                    position=torch.randint(1, 6, (n,), generator=g),
                    click=torch.bernoulli(torch.sigmoid(logit), generator=g), purchase=torch.zeros(n),
                    numeric=tenure.unsqueeze(1), categorical=device.int().unsqueeze(1),
                    numeric_names=("f_tenure",), categorical_names=("f_device",))


def held_out_auc(cfg: dict, train: Features, held: Features) -> float:
    model = ranker.new_model(6, cfg, seed=1, data=train)
    ranker.fit(model, train, None, TRAIN, seed=1, device="cpu", epochs=3)
    return roc_auc_score(held.click.numpy(), ranker.predict(model, held, "cpu", with_position=False)["p_click"])


def test_the_ranker_learns_from_numeric_and_string_f_columns():
    train, held = synthetic(8000, seed=1), synthetic(3000, seed=2)
    with_extras = held_out_auc(CFG, train, held)
    without = held_out_auc({**CFG, "extra": {"features": []}}, train, held)
    only_tenure = held_out_auc({**CFG, "extra": {**CFG["extra"], "features": ["f_tenure"]}}, train, held)
    assert with_extras > 0.8 and without < 0.6 and 0.6 < only_tenure < with_extras - 0.02, (with_extras, without, only_tenure)


def test_standardization_comes_from_the_training_rows_and_is_saved(tmp_path):
    train = synthetic(2000, seed=1)
    model = ranker.new_model(6, CFG, seed=1, data=train)
    assert model.config.numeric_features == ("f_tenure",) and model.config.categorical_features == ("f_device",)
    assert abs(float(model.numeric_mean) - float(train.numeric.mean())) < 1e-3
    assert abs(float(model.numeric_std) - float(train.numeric.std())) < 1.0
    ranker.save(model, tmp_path)
    loaded = ranker.load(tmp_path)
    assert loaded.config == model.config and torch.equal(loaded.numeric_std, model.numeric_std)


def test_rows_without_a_trained_f_column_are_still_scored():
    train = synthetic(2000, seed=1)
    model = ranker.new_model(6, CFG, seed=1, data=train)
    bare = synthetic(100, seed=3)
    bare = Features(bare.query, bare.title, bare.dense, bare.position, bare.click, bare.purchase)  # no f_* at all
    scores = ranker.predict(model, bare, "cpu", with_position=False)["score"]
    assert np.isfinite(scores).all()


def test_naming_an_f_column_the_log_lacks_fails_clearly():
    with pytest.raises(ValueError, match=r"ranker.extra.features .*\['f_nope'\].*f_device"):
        ranker.new_model(6, {**CFG, "extra": {**CFG["extra"], "features": ["f_nope"]}}, seed=1, data=synthetic(50, 1))
