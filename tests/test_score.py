"""The score command: every impression of a day scored by the champion (or a named registry model) with
its own encoder, the same numbers as the model's saved parts give on their own, and bad inputs stopped
with one line, exit 2 and no output file."""
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import DAY, NEXT_DAY, tiny_params
from pipeline.release import champions
from pipeline.data.simulate import command as simulate
from pipeline.data.contract import read_impressions, read_impressions_of_days
from pipeline.model.dataset import read_log

ROWS_PER_DAY = 1200


def make_model(folder, params: dict, data_dir, seed: int):
    """A real tiny encoder (the params' tiny BERT) and a ranker fitted for one epoch on the first day, saved
    as pretrain and train save them."""
    from pipeline.model import encoder as enc
    from pipeline.model import features, ranker
    from pipeline.model.embeddings import EmbeddingTable

    cfg = params["pretrain"]
    tokenizer, mlm = enc.load_base(enc.TINY_BERT, cfg["tiny_bert"], seed)
    encoder = mlm.base_model
    encoder.save_pretrained(folder / "encoder")
    tokenizer.save_pretrained(folder / "encoder")
    impressions, catalog = read_log(data_dir, [DAY], extra_features=True)
    texts = sorted(set(features.item_titles(impressions, catalog)) | set(impressions["query"].dropna()))
    table = EmbeddingTable(texts, enc.embed(encoder, tokenizer, texts, cfg["max_length"], 256, "cpu"))
    x = features.build(impressions, catalog, table, params["ranker"]["max_position"])
    model = ranker.new_model(table.dim, params["ranker"], seed, data=x)
    ranker.fit(model, x, None, params["train"], seed, "cpu", epochs=1)
    ranker.save(model, folder / "model")
    return folder / "encoder", folder / "model"


@pytest.fixture(scope="module")
def scored_workspace(tmp_path_factory):
    """Two simulated days and a registry with two promoted models; the second is the champion."""
    torch.set_num_threads(1)
    ws = tmp_path_factory.mktemp("score") / "ws"
    params = tiny_params()
    params["simulate"]["impressions_per_day"] = ROWS_PER_DAY
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    simulate.run(DAY, 2, ws / "data/raw", params)
    models = tmp_path_factory.mktemp("models")
    reg = ws / params["registry"]["dir"]
    first = champions.promote(reg, DAY, *make_model(models / "a", params, ws / "data/raw", 1))
    second = champions.promote(reg, NEXT_DAY, *make_model(models / "b", params, ws / "data/raw", 2))
    return ws, params, first, second


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "score", *map(str, args)],
                          capture_output=True, text=True)


def independent_predictions(ws, params, entry, day) -> pd.DataFrame:
    """The registry model's parts used by hand: its encoder embeds the day's texts, the features are built
    from them, and ranker.predict scores the rows (the path evaluate used before model_scoring existed)."""
    from pipeline.model import encoder as enc
    from pipeline.model import features, ranker
    from pipeline.model.embeddings import EmbeddingTable

    folder = champions.model_dir(ws / params["registry"]["dir"], entry)
    impressions, catalog = read_log(ws / "data/raw", [day], extra_features=True)
    tokenizer, encoder = enc.load_encoder(folder / "encoder")
    texts = sorted(set(features.item_titles(impressions, catalog)) | set(impressions["query"].dropna()))
    table = EmbeddingTable(texts, enc.embed(encoder, tokenizer, texts, params["pretrain"]["max_length"], 256, "cpu"))
    logged = read_log(ws / "data/raw", [d for d in (DAY, NEXT_DAY) if d <= day])[0]
    history = logged[["user_id", "item_id", "ts", "price", "position", "clicked"]]
    knobs = params["ranker"]["history"]
    x = features.build(impressions, catalog, table, params["ranker"]["max_position"], history=history,
                       recent_clicks=knobs["recent_clicks"], item_prior=knobs["item_prior"])
    predicted = ranker.predict(ranker.load(folder / "ranker"), x, "cpu", with_position=True)
    return pd.DataFrame({"event_id": impressions["event_id"].to_numpy(), **predicted})


def check_scores(out, ws, day):
    scored = pd.read_parquet(out)
    assert list(scored.columns) == ["event_id", "score", "p_click", "p_purchase"]
    impressions = read_impressions(ws / "data/raw", day)
    assert len(scored) == len(impressions) and scored["event_id"].is_unique
    assert set(scored["event_id"]) == set(impressions["event_id"])
    values = scored[["score", "p_click", "p_purchase"]].to_numpy()
    assert np.isfinite(values).all()
    assert ((scored["p_click"] >= 0) & (scored["p_click"] <= 1)).all()
    assert (scored["p_purchase"] >= 0).all() and (scored["p_purchase"] <= scored["p_click"]).all()
    assert scored["score"].std() > 0
    return scored


@pytest.fixture(scope="module")
def champion_export(scored_workspace, tmp_path_factory):
    """The champion's scores of the second day, written by the command, and what it printed."""
    ws = scored_workspace[0]
    out = tmp_path_factory.mktemp("export") / "exports" / "scores.parquet"
    return out, cli("--workspace", ws, "--day", NEXT_DAY, "--out", out)


def test_scores_every_impression_of_the_day_with_the_champion(scored_workspace, champion_export):
    ws, params, _, champion = scored_workspace
    out, result = champion_export
    assert result.returncode == 0, result.stderr
    assert f"scored by {champion['model_id']}" in result.stdout
    scored = check_scores(out, ws, NEXT_DAY)
    metadata = pq.read_schema(out).metadata
    assert metadata[b"sieve.model_id"].decode() == champion["model_id"]
    assert metadata[b"sieve.day"].decode() == NEXT_DAY
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]  # no temp file left behind

    # The same numbers as the champion's encoder and ranker give when used by hand.
    expected = independent_predictions(ws, params, champion, NEXT_DAY)
    joined = scored.merge(expected, on="event_id", suffixes=("", "_expected"), validate="one_to_one")
    assert len(joined) == len(scored)
    for column in ("score", "p_click", "p_purchase"):
        np.testing.assert_allclose(joined[column], joined[f"{column}_expected"], rtol=1e-5, atol=1e-6)


def test_model_scoring_on_reordered_rows_gives_the_same_scores(scored_workspace, champion_export):
    """The export matches model_scoring (what evaluate scores the champion with) row by row, whatever the
    row order, with the history of both days' clicks."""
    from pipeline.model.scoring import model_predictions

    ws, params, _, champion = scored_workspace
    out, result = champion_export
    assert result.returncode == 0, result.stderr
    impressions, catalog = read_log(ws / "data/raw", [NEXT_DAY], extra_features=True)
    shuffled = impressions.sample(frac=1.0, random_state=0).reset_index(drop=True)
    logged = read_impressions_of_days(ws / "data/raw", [DAY, NEXT_DAY])
    history = logged[["user_id", "item_id", "ts", "price", "position", "clicked"]]
    predicted = model_predictions(champions.model_dir(ws / "registry", champion), shuffled, catalog, params, "cpu",
                                  history=history)
    expected = pd.DataFrame({"event_id": shuffled["event_id"], "score_expected": predicted["score"]})
    joined = pd.read_parquet(out).merge(expected, on="event_id", validate="one_to_one")
    np.testing.assert_allclose(joined["score"], joined["score_expected"], rtol=1e-5, atol=1e-6)


def test_model_option_scores_with_the_named_registry_model(scored_workspace, tmp_path):
    ws, params, first, champion = scored_workspace
    named, served = tmp_path / "first.parquet", tmp_path / "champion.parquet"
    result = cli("--workspace", ws, "--day", DAY, "--model", first["model_id"], "--out", named)
    assert result.returncode == 0, result.stderr
    assert f"scored by {first['model_id']}" in result.stdout
    assert cli("--workspace", ws, "--day", DAY, "--out", served).returncode == 0
    by_first, by_champion = check_scores(named, ws, DAY), check_scores(served, ws, DAY)
    assert pq.read_schema(named).metadata[b"sieve.model_id"].decode() == first["model_id"]
    assert not np.allclose(by_first["score"], by_champion["score"])  # another model, other scores
    expected = independent_predictions(ws, params, first, DAY)
    joined = by_first.merge(expected, on="event_id", suffixes=("", "_expected"), validate="one_to_one")
    np.testing.assert_allclose(joined["score"], joined["score_expected"], rtol=1e-5, atol=1e-6)


def no_champion(ws):
    (ws / "registry" / champions.POINTER).unlink()


def no_encoder(ws):
    entry = champions.current(ws / "registry")
    shutil.rmtree(champions.model_dir(ws / "registry", entry) / "encoder")


def broken_params(ws):
    (ws / "params.yaml").write_text("seed: [1, 2\nregistry: {dir: registry}\n")


def no_registry_section(ws):
    params = yaml.safe_load((ws / "params.yaml").read_text())
    del params["registry"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


BAD_INPUTS = {
    "unknown model": (None, ["--model", "2026-01-01-000000000000"],
                      "unknown model '2026-01-01-000000000000': not in"),
    "no champion": (no_champion, [], "no champion yet"),
    "missing day": (None, ["--day", "2026-12-25"], "no logs for 2026-12-25"),
    "malformed day": (None, ["--day", "2026-13-01"], "day must be a YYYY-MM-DD date, got '2026-13-01'"),
    "encoder missing": (no_encoder, [], "/encoder lacks config.json"),
    "broken params": (broken_params, [], "params.yaml: not valid YAML"),
    "params without a registry": (no_registry_section, [], "params.yaml: registry is missing"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_file(scored_workspace, tmp_path, case):
    source, _, _, _ = scored_workspace
    ws = tmp_path / "ws"
    shutil.copytree(source, ws)
    breaks, args, message = BAD_INPUTS[case]
    if breaks is not None:
        breaks(ws)
    options = {"--day": NEXT_DAY, **dict(zip(args[::2], args[1::2]))}
    out = tmp_path / "out" / "scores.parquet"
    result = cli("--workspace", ws, *[v for pair in options.items() for v in pair], "--out", out)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("score: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_a_failed_run_leaves_an_earlier_export_untouched(scored_workspace, tmp_path):
    ws, _, _, _ = scored_workspace
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"the export of an earlier run")
    result = cli("--workspace", ws, "--day", "2026-12-25", "--out", out)
    assert result.returncode == 2
    assert out.read_bytes() == b"the export of an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"]
