"""Rolling the champion back: the pointer returns to an earlier promoted model whose files still
load, the history records it, a second rollback goes further back, and bad requests fail clearly."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from pipeline.release import champions, rollback

DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")


def make_candidate(folder, seed: int):
    """A real (tiny) encoder and ranker, as the pretrain and train stages write them."""
    from transformers import BertConfig, BertModel

    from pipeline.model import encoder as enc
    from pipeline.model import ranker

    torch.manual_seed(seed)
    tokenizer, _ = enc.load_base(enc.TINY_BERT, {"hidden_size": 8, "num_hidden_layers": 1,
                                                 "num_attention_heads": 1, "intermediate_size": 8}, seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder / "encoder")
    tokenizer.save_pretrained(folder / "encoder")
    ranker.save(ranker.new_model(8, {"hidden": 4, "max_position": 5, "dropout": 0.0}, seed), folder / "model")
    return folder / "encoder", folder / "model"


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    return [make_candidate(root / day, seed) for seed, day in enumerate(DAYS)]


def promoted(reg, candidates, count):
    return [champions.promote(reg, DAYS[i], *candidates[i]) for i in range(count)]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", "rollback", *args],
                          cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"registry": {"dir": str(tmp_path / "registry")}}))
    return path


def ranker_state(folder):
    from pipeline.model import ranker

    return ranker.load(folder).state_dict()


def test_rollback_restores_the_first_champion_with_loadable_files(tmp_path, candidates, params_file):
    from pipeline.model import encoder as enc

    reg = tmp_path / "registry"
    first, second = promoted(reg, candidates, 2)
    result = cli("--params", str(params_file), "--reason", "bad clicks", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert first["model_id"] in result.stdout and second["model_id"] in result.stdout

    champion = champions.current(reg)
    assert champion["model_id"] == first["model_id"] and champion["day"] == DAYS[0]
    assert champion["restored_from"] == second["model_id"]
    folder = champions.model_dir(reg, champion)
    tokenizer, encoder = enc.load_encoder(folder / "encoder")
    assert encoder.config.hidden_size == 8 and len(tokenizer("a red shoe")["input_ids"]) > 2
    expected = ranker_state(candidates[0][1])
    assert all(torch.equal(v, expected[k]) for k, v in ranker_state(folder / "ranker").items())
    # The rolled-back model's files stay, unchanged.
    assert (champions.model_dir(reg, second) / "ranker" / "ranker.safetensors").is_file()
    assert not list(reg.glob(".champion.json.*")), "temp file left behind"


def test_history_records_who_served_before_and_after(tmp_path, candidates):
    reg = tmp_path / "registry"
    first, second = promoted(reg, candidates, 2)
    event = champions.rollback(reg, reason="bad clicks")
    lines = [json.loads(line) for line in (reg / "history.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines] == ["promote", "promote", "rollback"]
    assert lines[-1] == event
    assert event["previous"] == second["model_id"] and event["previous_day"] == DAYS[1]
    assert event["model_id"] == first["model_id"] and event["day"] == DAYS[0]
    assert event["reason"] == "bad clicks" and event["rolled_back_at"].endswith("+00:00")


def test_a_second_rollback_goes_further_back_not_back_and_forth(tmp_path, candidates, params_file):
    reg = tmp_path / "registry"
    first, second, third = promoted(reg, candidates, 3)
    assert champions.rollback(reg)["model_id"] == second["model_id"]
    assert champions.rollback(reg)["model_id"] == first["model_id"]   # not back to the third
    assert champions.current(reg)["model_id"] == first["model_id"]
    before = (reg / "champion.json").read_bytes()
    result = cli("--params", str(params_file), cwd=ROOT)
    assert result.returncode == rollback.EXIT_REFUSED
    assert "nothing to roll back to" in result.stderr and first["model_id"] in result.stderr
    assert "Traceback" not in result.stderr
    assert (reg / "champion.json").read_bytes() == before
    assert len(champions.history(reg)) == 5


def test_with_one_promotion_left_a_second_rollback_fails_clearly(tmp_path, candidates, params_file):
    reg = tmp_path / "registry"
    first, _ = promoted(reg, candidates, 2)
    assert cli("--params", str(params_file), cwd=ROOT).returncode == 0
    again = cli("--params", str(params_file), cwd=ROOT)
    assert again.returncode == rollback.EXIT_REFUSED
    assert f"nothing to roll back to: {first['model_id']} is the only live promotion" in again.stderr
    assert champions.current(reg)["model_id"] == first["model_id"]


def test_empty_registry_has_nothing_to_roll_back(tmp_path, params_file):
    result = cli("--params", str(params_file), cwd=ROOT)
    assert result.returncode == rollback.EXIT_REFUSED and "no champion yet" in result.stderr
    assert not (tmp_path / "registry" / "champion.json").exists()


def test_to_restores_a_named_model_and_later_rollbacks_start_from_it(tmp_path, candidates, params_file):
    reg = tmp_path / "registry"
    first, second, third = promoted(reg, candidates, 3)
    result = cli("--params", str(params_file), "--to", first["model_id"], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert champions.current(reg)["model_id"] == first["model_id"]
    # Both later promotions are undone: nothing before the first one to go back to.
    assert [p["model_id"] for p in champions.live_promotions(champions.history(reg))] == [first["model_id"]]
    assert cli("--params", str(params_file), cwd=ROOT).returncode == rollback.EXIT_REFUSED
    # A model that was rolled back can be named to roll forward; the next rollback leaves it again.
    assert champions.rollback(reg, to=third["model_id"])["previous"] == first["model_id"]
    assert champions.rollback(reg)["model_id"] == first["model_id"]


def test_to_an_unknown_or_serving_model_fails_clearly(tmp_path, candidates, params_file):
    reg = tmp_path / "registry"
    first, second = promoted(reg, candidates, 2)
    before = (reg / "champion.json").read_bytes()
    unknown = cli("--params", str(params_file), "--to", "2026-11-09-000000000000", cwd=ROOT)
    assert unknown.returncode == rollback.EXIT_UNKNOWN
    assert "unknown model '2026-11-09-000000000000'" in unknown.stderr and second["model_id"] in unknown.stderr
    serving = cli("--params", str(params_file), "--to", second["model_id"], cwd=ROOT)
    assert serving.returncode == rollback.EXIT_REFUSED and "already the champion" in serving.stderr
    assert (reg / "champion.json").read_bytes() == before and len(champions.history(reg)) == 2


def test_a_model_whose_files_are_gone_is_not_restored(tmp_path, candidates):
    import shutil

    reg = tmp_path / "registry"
    first, second = promoted(reg, candidates, 2)
    shutil.rmtree(champions.model_dir(reg, first) / "ranker")
    with pytest.raises(champions.RollbackError, match="lacks ranker/"):
        champions.rollback(reg)
    assert champions.current(reg)["model_id"] == second["model_id"]


def test_a_promotion_after_a_rollback_rolls_back_past_the_withdrawn_model(tmp_path, candidates):
    reg = tmp_path / "registry"
    first, second, _ = promoted(reg, candidates, 3)
    champions.rollback(reg, to=first["model_id"])           # the second and third are withdrawn
    (candidates[1][1] / "extra.json").write_text("{}")   # a retrained second day: a new model id
    try:
        fourth = champions.promote(reg, DAYS[1], *candidates[1])
    finally:
        (candidates[1][1] / "extra.json").unlink()
    assert fourth["model_id"] != second["model_id"]
    assert champions.rollback(reg)["model_id"] == first["model_id"]
