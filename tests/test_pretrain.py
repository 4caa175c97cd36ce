"""The encoder refresh and what it is measured on: the day's corpus, held-out texts the refresh
never sees, recall of (query, clicked title) pairs before and after, the optional contrastive loss,
and the pretrain stage skipped by DVC when a new day brings the same corpus."""
import json
import shutil
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from conftest import DAY, NEXT_DAY, ROOT, make_workspace, repro, simulate, tiny_params
from pipeline.data import corpus as corpus_mod
from pipeline.model import refresh
from pipeline.stages import pretrain
from pipeline.params import load_params, stage_seed
from pipeline.runplan import dvc_env


def unit(*rows):
    vectors = np.array(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_recall_at_k_on_a_hand_made_example():
    candidates = unit([1, 0], [0.9, 0.1], [0, 1], [-1, 0])
    queries = unit([1, 0], [0, 1], [-1, 0.05])
    # query 0 clicked candidate 1 (second closest); query 1 clicked 2 (closest); query 2 clicked 0 (farthest).
    clicked = np.array([1, 2, 0])
    assert refresh.recall_at_k(queries, candidates, clicked, k=1) == pytest.approx(1 / 3)
    assert refresh.recall_at_k(queries, candidates, clicked, k=2) == pytest.approx(2 / 3)
    assert refresh.recall_at_k(queries, candidates, clicked, k=3) == pytest.approx(2 / 3)
    assert refresh.recall_at_k(queries, candidates, clicked, k=4) == 1.0
    # A tie with the clicked title does not push it out of the top k.
    assert refresh.recall_at_k(unit([1, 0]), unit([1, 0], [1, 0]), np.array([1]), k=1) == 1.0


def test_recall_at_k_rejects_bad_input():
    vectors = unit([1, 0], [0, 1])
    with pytest.raises(ValueError, match="outside the candidates"):
        refresh.recall_at_k(vectors, vectors, np.array([0, 2]), k=1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        refresh.recall_at_k(vectors, vectors, np.array([0, 1]), k=0)
    with pytest.raises(ValueError, match="no query"):
        refresh.recall_at_k(vectors[:0], vectors, np.array([], dtype=int), k=1)


def test_corpus_holds_unique_texts_and_distinct_clicked_pairs():
    impressions = pa.table({
        "query": ["red shoe", "red shoe", "red shoe", None, "", "blue hat", "blue hat"],
        "item_id": ["i1", "i1", "i2", "i3", "i3", "i2", "i4"],
        "clicked": [1, 1, 0, 1, 1, 1, 1],
    })
    catalog = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4"],
                            "title": ["Red running shoe", "Blue hat", "Green sock", "blue hat"]})
    corpus = corpus_mod.from_tables(impressions, catalog)
    assert corpus.texts == sorted(["Red running shoe", "Blue hat", "Green sock", "blue hat", "red shoe"])
    flags = dict(zip(corpus.texts, zip(corpus.is_title, corpus.is_query)))
    assert flags["red shoe"] == (False, True) and flags["Green sock"] == (True, False)
    assert flags["blue hat"] == (True, True)   # a title that is also a query
    # Clicked searches only (not the recommendation, not the empty query, not the unclicked row), once each.
    assert corpus.pairs == [("blue hat", "Blue hat"), ("blue hat", "blue hat"), ("red shoe", "Red running shoe")]


def test_corpus_files_round_trip_and_are_byte_stable(tmp_path):
    corpus = corpus_mod.Corpus(["a", "b c"], np.array([True, False]), np.array([False, True]), [("b c", "a")])
    corpus_mod.save(tmp_path / "one", corpus)
    corpus_mod.save(tmp_path / "two", corpus_mod.load(tmp_path / "one"))
    for name in (corpus_mod.TEXTS_FILE, corpus_mod.PAIRS_FILE):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    back = corpus_mod.load(tmp_path / "two")
    assert back.texts == corpus.texts and back.pairs == corpus.pairs and back.titles == ["a"]
    (tmp_path / "two" / corpus_mod.PAIRS_FILE).unlink()
    with pytest.raises(corpus_mod.ContractError, match="pairs.parquet: missing"):
        corpus_mod.load(tmp_path / "two")


def stage_params():
    """tiny_params on one CPU thread: on a busy shared machine two threads of tiny matrices mostly wait."""
    params = tiny_params()
    params["compute"]["threads"] = 1
    return params


def cfg(**overrides):
    settings = tiny_params()["pretrain"]
    settings.update(overrides)
    return settings


def test_held_out_texts_are_never_in_the_training_sample():
    texts = [f"text {i:04d}" for i in range(1000)]
    split = refresh.split_texts(texts, cfg(heldout_fraction=0.1, max_texts=500, max_heldout_texts=40), seed=3)
    assert len(split.heldout_all) == 100 and len(split.train) == 500 and len(split.heldout) == 40
    assert not set(split.train) & split.heldout_all
    assert set(split.heldout) <= split.heldout_all
    # Seeded: the same split again; another seed, another split.
    again = refresh.split_texts(texts, cfg(heldout_fraction=0.1, max_texts=500, max_heldout_texts=40), seed=3)
    assert again == split
    assert refresh.split_texts(texts, cfg(heldout_fraction=0.1), seed=4).heldout_all != split.heldout_all
    none = refresh.split_texts(texts, cfg(heldout_fraction=0.0, max_texts=5000), seed=3)
    assert none.heldout == [] and none.train == texts
    with pytest.raises(ValueError, match=r"pretrain.heldout_fraction must be a number in \[0, 1\), got 1.0"):
        refresh.split_texts(texts, cfg(heldout_fraction=1.0), seed=3)


def small_corpus(pairs=60, other_titles=200):
    titles = [f"title {i}" for i in range(pairs + other_titles)]
    queries = [f"query {i}" for i in range(pairs)]
    texts = sorted(titles + queries)
    return corpus_mod.Corpus(texts, np.array([t.startswith("title") for t in texts]),
                             np.array([t.startswith("query") for t in texts]),
                             sorted((f"query {i}", f"title {i}") for i in range(pairs)))


def recall_cfg(**overrides):
    return {"k": 10, "heldout_pairs_fraction": 0.5, "max_pairs": 25, "max_candidates": 100, **overrides}


def test_retrieval_candidates_hold_every_clicked_title_within_the_caps():
    corpus = small_corpus()
    chosen = refresh.retrieval_set(corpus, cfg(recall=recall_cfg()), seed=1)
    assert len(chosen.heldout_pairs) == 30 and len(chosen.queries) == 25 and len(chosen.candidates) == 100
    assert set(chosen.candidates) <= set(corpus.titles)
    for query, row in zip(chosen.queries, chosen.clicked):
        assert (query, chosen.candidates[row]) in chosen.heldout_pairs
    with pytest.raises(ValueError, match="max_candidates .20. must be at least pretrain.recall.max_pairs .25."):
        refresh.retrieval_set(corpus, cfg(recall=recall_cfg(max_candidates=20)), seed=1)
    with pytest.raises(ValueError, match="heldout_pairs_fraction must be a number in .0, 1., got 0"):
        refresh.retrieval_set(corpus, cfg(recall=recall_cfg(heldout_pairs_fraction=0)), seed=1)


def test_contrastive_pairs_leave_out_held_out_pairs_and_texts():
    corpus = small_corpus()
    settings = cfg(heldout_fraction=0.2, recall=recall_cfg(max_pairs=10))
    split = refresh.split_texts(corpus.texts, settings, seed=2)
    chosen = refresh.retrieval_set(corpus, settings, seed=2)
    pairs = refresh.training_pairs(corpus, split, chosen)
    measured = set(zip(chosen.queries, (chosen.candidates[i] for i in chosen.clicked)))
    assert pairs and measured <= chosen.heldout_pairs and not set(pairs) & chosen.heldout_pairs
    assert not {text for pair in pairs for text in pair} & split.heldout_all
    assert len(pairs) < len(corpus.pairs) - len(chosen.heldout_pairs)  # some dropped for a held-out text


@pytest.fixture(scope="module")
def day_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("day")
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    simulate(folder, DAY)
    return corpus_mod.day_corpus(folder / "data/raw", DAY)


def test_metrics_record_the_refresh_before_and_after(day_corpus, tmp_path):
    from pipeline.model import encoder as enc

    params = stage_params()
    params["pretrain"]["contrastive"]["enabled"] = False
    params["pretrain"]["mlm_weight"] = 1.0  # the masked-LM refresh alone
    metrics = pretrain.run(day_corpus, tmp_path / "out", params)
    saved = json.loads((tmp_path / "out/metrics.json").read_text())
    assert saved == metrics and saved["contrastive"] is False
    for name in ("mlm_loss_heldout_before", "mlm_loss_heldout_after"):
        assert np.isfinite(saved[name]) and saved[name] > 0
    for name in ("recall_at_10_before", "recall_at_10_after"):
        assert 0.0 <= saved[name] <= 1.0
    recall = params["pretrain"]["recall"]
    assert saved["recall_pairs"] == min(round(len(day_corpus.pairs) * recall["heldout_pairs_fraction"]),
                                        recall["max_pairs"]) > 0
    assert saved["heldout_texts"] > 0 and saved["train_texts"] + saved["heldout_texts"] <= saved["texts"]
    # The "before" numbers are those of the base model: measured again on a fresh one, the same.
    cfg_ = params["pretrain"]
    seed = stage_seed(params, "pretrain")
    tokenizer, base = enc.load_base(cfg_["base_model"], cfg_["tiny_bert"], seed)
    again = refresh.measure(base, tokenizer, refresh.split_texts(day_corpus.texts, cfg_, seed),
                             refresh.retrieval_set(day_corpus, cfg_, seed), cfg_, seed, "cpu")
    assert again == {"mlm_loss_heldout": saved["mlm_loss_heldout_before"], "recall": saved["recall_at_10_before"]}
    # And the refresh moved the model: after differs from before on the same masked tokens.
    assert saved["mlm_loss_heldout_after"] != saved["mlm_loss_heldout_before"]


def test_contrastive_refresh_trains_queries_toward_their_clicked_titles(day_corpus, tmp_path):
    params = stage_params()
    params["pretrain"].update(max_steps=30, learning_rate=3e-3,
                              contrastive={"enabled": True, "weight": 1.0, "temperature": 0.05, "batch_size": 16})
    metrics = pretrain.run(day_corpus, tmp_path / "out", params)
    assert metrics["contrastive"] is True and metrics["contrastive_pairs"] > 0
    assert metrics["contrastive_loss_last"] < metrics["contrastive_loss_first"]
    assert metrics["recall_at_10_after"] > metrics["recall_at_10_before"]
    assert metrics["refresh_used"] is True and metrics["refresh_decision"].startswith("refresh used")
    assert metrics["mlm_loss_first"] is None  # pretrain.mlm_weight 0 (the default): contrastive only
    # and the untrained MLM head's held-out loss is not measured either
    assert metrics["mlm_loss_heldout_before"] is None and metrics["mlm_loss_heldout_after"] is None


def embeddings_of(folder):
    from pipeline.model import embeddings

    table = embeddings.load(folder)
    return table.texts, table.vectors


def test_a_refresh_that_lowers_recall_is_not_used(day_corpus, tmp_path):
    """A masked-LM refresh at a destructive rate lowers held-out recall: the stage writes the base
    encoder, embeds with it, and says so; the output is that of a run whose refresh never happened."""
    params = stage_params()
    # The default sentence encoder (the tiny BERT's random vectors have no recall to lose).
    from pipeline.model import encoder as enc

    params = stage_params()
    cfg_ = params["pretrain"]
    # The default sentence encoder (the tiny BERT's random vectors have no recall to lose); no held-out
    # masked-LM loss and few candidates keep it quick.
    cfg_.update(base_model=load_params(ROOT / "params.yaml")["pretrain"]["base_model"], mlm_weight=1.0,
                max_steps=5, learning_rate=5e-2, max_heldout_texts=0)
    cfg_["recall"].update(max_pairs=200, max_candidates=400)
    cfg_["contrastive"]["enabled"] = False
    metrics = pretrain.run(day_corpus, tmp_path / "bad", params)
    assert metrics["recall_at_10_after"] < metrics["recall_at_10_before"]  # the premise: it hurt
    assert metrics["refresh_used"] is False and "refresh not used" in metrics["refresh_decision"]
    texts, vectors = embeddings_of(tmp_path / "bad/embeddings")
    tokenizer, base = enc.load_base(cfg_["base_model"], cfg_["tiny_bert"], 0)
    sample = texts[:: max(1, len(texts) // 40)]
    expected = enc.embed(base.base_model, tokenizer, sample, cfg_["max_length"], cfg_["embed_batch_size"], "cpu")
    np.testing.assert_allclose(vectors[[texts.index(t) for t in sample]], expected, atol=1e-5)


@pytest.mark.parametrize("before, after, gain, used", [
    (0.30, 0.33, 0.0, True), (0.30, 0.30, 0.0, False), (0.30, 0.29, 0.0, False), (0.30, 0.32, 0.05, False),
    (None, None, 0.0, False)])
def test_refresh_decision(before, after, gain, used):
    settings = cfg(min_recall_gain=gain)
    assert refresh.refresh_decision(before, after, settings)[0] is used


def test_contrastive_settings_are_checked(day_corpus, tmp_path):
    params = stage_params()
    params["pretrain"]["contrastive"] = {"enabled": True, "weight": 1.0, "temperature": 0.0, "batch_size": 16}
    with pytest.raises(ValueError, match="pretrain.contrastive.temperature must be a number above 0, got 0.0"):
        pretrain.run(day_corpus, tmp_path / "out", params)
    assert not (tmp_path / "out").exists()


def test_pretrain_command_needs_a_corpus_or_a_raw_day(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "pretrain", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "give --corpus DIR, or --data DIR with --day" in result.stderr


def copy_day_as(workspace, day: str, new_day: str) -> None:
    """A new day whose impressions are the old day's, a day later, under new ids: the same corpus."""
    raw = workspace / "data/raw"
    frame = pd.read_parquet(next((raw / f"impressions/dt={day}").glob("part-*.parquet")))
    frame["ts"] = frame["ts"] + timedelta(days=1)
    for column in ("event_id", "request_id", "session_id"):
        frame[column] = frame[column] + "-next"
    (raw / f"impressions/dt={new_day}").mkdir(parents=True)
    frame.to_parquet(raw / f"impressions/dt={new_day}/part-00000.parquet", index=False)
    shutil.copytree(raw / f"catalog/dt={day}", raw / f"catalog/dt={new_day}")


def dvc_single(workspace, stage):
    """`dvc repro` of one stage, as `pipeline repro` runs it (the stage's `python` is this interpreter)."""
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=workspace,
                            env=dvc_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"dvc repro {stage} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_pretrain_stage_is_skipped_when_the_corpus_did_not_change(tmp_path):
    workspace = make_workspace(tmp_path / "ws", stage_params())
    simulate(workspace, DAY)
    repro(workspace, DAY, "validate")
    dvc_single(workspace, "corpus")
    first = dvc_single(workspace, "pretrain")
    assert "Running stage 'pretrain'" in first.stdout
    metrics = (workspace / "work/pretrain/metrics.json").read_bytes()
    assert "recall_at_10_after" in json.loads(metrics)

    copy_day_as(workspace, DAY, NEXT_DAY)
    repro(workspace, NEXT_DAY, "validate")
    corpus = dvc_single(workspace, "corpus")
    assert "Running stage 'corpus'" in corpus.stdout          # a new day: its corpus is collected
    again = dvc_single(workspace, "pretrain")
    assert "Running stage 'pretrain'" not in again.stdout, again.stdout
    assert (workspace / "work/pretrain/metrics.json").read_bytes() == metrics


@pytest.mark.parametrize("section, key, value, message", [
    ("pretrain", "max_texts", 0, "pretrain.max_texts must be a whole number of at least 1, got 0"),
    ("pretrain", "heldout_batch_size", 2.5, "pretrain.heldout_batch_size must be a whole number of at least 1"),
    ("recall", "k", 0, "pretrain.recall.k must be a whole number of at least 1, got 0"),
])
def test_bad_knobs_are_named(day_corpus, tmp_path, section, key, value, message):
    params = stage_params()
    (params["pretrain"] if section == "pretrain" else params["pretrain"]["recall"])[key] = value
    with pytest.raises(ValueError, match=message):
        pretrain.run(day_corpus, tmp_path / "out", params)


def test_a_day_with_too_few_pairs_keeps_the_base_encoder_and_says_so(tmp_path):
    """A day of a handful of clicks: one (query, clicked title) pair, held out for recall, leaves the
    contrastive loss nothing to train on; the stage writes the base encoder and says why."""
    titles = [f"Trail running shoe {k}" for k in range(30)]
    texts = sorted(titles + ["trail shoe"])
    corpus = corpus_mod.Corpus(texts, np.array([t in titles for t in texts]),
                               np.array([t == "trail shoe" for t in texts]), [("trail shoe", titles[3])])
    metrics = pretrain.run(corpus, tmp_path / "out", stage_params())
    assert metrics["steps"] == 0 and not metrics["refresh_used"] and metrics["contrastive_pairs"] == 0
    assert "at least 2 needed" in metrics["refresh_decision"]
    assert "pretrain.recall.heldout_pairs_fraction" in metrics["refresh_decision"]
    assert (tmp_path / "out/embeddings").is_dir() and (tmp_path / "out/encoder").is_dir()
