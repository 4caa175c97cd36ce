"""The encoder's top layers tuned inside the ranker: a cache of the frozen bottom layers' output per
unique text, a tower that starts equal to the frozen embeddings, its own learning rate, safe
save/load, and the retrain (train, evaluate against a champion that has a tower too) through DVC."""
import json

import numpy as np
import pytest
import torch

from conftest import DAY, NEXT_DAY, make_workspace, repro, simulate, tiny_params
from pipeline.model import encoder as enc
from pipeline.model import ranker, text_tower
from pipeline.model.features import DENSE_FEATURES, Features

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TEXTS = ["red running shoe", "trail running shoe", "steel kettle", "cotton shirt blue", "kettle", "shoe"]
CFG = {"hidden": 8, "max_position": 5, "dropout": 0.0, "encoder": {"learning_rate": 1e-3}}


@pytest.fixture(scope="module")
def encoder():
    tokenizer, model = enc.load_base("tiny-bert", TINY, seed=1)
    return tokenizer, model.base_model.eval()


def rows(encoder, n=600, seed=0) -> Features:
    """Rows whose query and title index TEXTS (the last index: no query); clicks favour one title."""
    tokenizer, model = encoder
    vectors = torch.from_numpy(enc.embed(model, tokenizer, TEXTS, 16, 8, "cpu"))
    g = torch.Generator().manual_seed(seed)
    query = torch.randint(0, len(TEXTS) + 1, (n,), generator=g).int()
    title = torch.randint(0, len(TEXTS), (n,), generator=g).int()
    x = Features(query=query, title=title, dense=torch.zeros(n, len(DENSE_FEATURES)),
                 position=torch.randint(1, 6, (n,), generator=g),
                 click=torch.bernoulli(torch.where(title == 2, 0.8, 0.1), generator=g), purchase=torch.zeros(n),
                 texts=torch.cat([vectors, torch.zeros(1, vectors.shape[1])]))
    x.states = text_tower.bottom_states(model, tokenizer, TEXTS, 1, 16, 4, "cpu")
    return x


def test_the_tower_starts_equal_to_the_frozen_embeddings(encoder):
    x = rows(encoder, 50)
    tower = text_tower.TextTower.from_encoder(encoder[1], 1).eval()
    query, title = tower.vectors(x.states, *x.text_indices)
    assert torch.allclose(query, x.query, atol=1e-6) and torch.allclose(title, x.title, atol=1e-6)
    assert (query[x.text_indices[0] == len(TEXTS)] == 0).all()  # no query: the zero vector, as in the table


def test_tuned_layers_train_at_their_own_rate_and_reload_exactly(encoder, tmp_path):
    x = rows(encoder)
    start = text_tower.TextTower.from_encoder(encoder[1], 1)
    frozen_rate = ranker.new_model(32, {**CFG, "encoder": {"learning_rate": 0.0}}, seed=1, data=x, tower=start)
    tuned = ranker.new_model(32, CFG, seed=1, data=x, tower=start)
    train = {"batch_size": 64, "learning_rate": 0.01, "weight_decay": 0.0}
    for model in (frozen_rate, tuned):
        ranker.fit(model, x, None, train, seed=1, device="cpu", epochs=2)
    before = start.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in frozen_rate.text_tower.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in tuned.text_tower.state_dict().items())
    assert not torch.equal(frozen_rate.click_head.weight, ranker.new_model(32, CFG, 1, x, start).click_head.weight)
    ranker.save(tuned, tmp_path)
    loaded = ranker.load(tmp_path)
    assert loaded.config.tower_layers == 1
    a, b = ranker.predict(tuned, x, "cpu", True), ranker.predict(loaded, x, "cpu", True)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    x.states = None
    with pytest.raises(ValueError, match="tunes the encoder's top layers"):
        ranker.predict(loaded, x, "cpu", True)


def test_a_retrain_with_tuned_layers_runs_through_dvc_and_is_compared_with_its_champion(tmp_path):
    params = tiny_params()
    params["ranker"]["encoder"]["tune_top_layers"] = 1  # tiny-bert has two layers: the top one is tuned
    workspace = make_workspace(tmp_path / "ws", params)
    simulate(workspace, DAY, days=2)
    repro(workspace, DAY)
    config = json.loads((workspace / "work/train/model/ranker.json").read_text())
    assert config["tower_layers"] == 1 and config["tower_config"]["hidden_size"] == 32
    repro(workspace, NEXT_DAY)  # the DAY champion (with its tower) is scored on NEXT_DAY's slice
    metrics = json.loads((workspace / "work/evaluate/metrics.json").read_text())
    assert metrics["champion"] is not None and metrics["champion"]["auc_click"] is not None
    assert metrics["candidate"]["auc_click"] is not None
