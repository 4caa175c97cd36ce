"""The champion registry and the promote stage: atomic pointer, history, baselines by day."""
import json

import pytest

from pipeline.stages import promote
from pipeline.release import champions


@pytest.fixture
def candidate(tmp_path):
    encoder, ranker = tmp_path / "cand" / "encoder", tmp_path / "cand" / "model"
    encoder.mkdir(parents=True)
    ranker.mkdir(parents=True)
    (encoder / "config.json").write_text("{}")
    (ranker / "ranker.json").write_text("{}")
    return encoder, ranker


def decision_file(tmp_path, blessed: bool):
    path = tmp_path / "decision.json"
    path.write_text(json.dumps({"blessed": blessed, "reason": "test"}))
    return path


def params(tmp_path):
    return {"registry": {"dir": str(tmp_path / "registry")}}


def test_not_blessed_leaves_the_registry_untouched(tmp_path, candidate):
    champions.promote(tmp_path / "registry", "2026-10-31", *candidate)
    before = (tmp_path / "registry" / "champion.json").read_bytes()
    outcome = promote.run(decision_file(tmp_path, False), "2026-11-01", *candidate, tmp_path / "out", params(tmp_path))
    assert outcome["promoted"] is False
    assert (tmp_path / "registry" / "champion.json").read_bytes() == before
    assert len(champions.history(tmp_path / "registry")) == 1


def test_blessed_candidate_becomes_champion(tmp_path, candidate):
    outcome = promote.run(decision_file(tmp_path, True), "2026-11-01", *candidate, tmp_path / "out", params(tmp_path))
    champion = champions.current(tmp_path / "registry")
    assert outcome["promoted"] and champion["model_id"] == outcome["model_id"]
    folder = champions.model_dir(tmp_path / "registry", champion)
    assert (folder / "encoder" / "config.json").is_file() and (folder / "ranker" / "ranker.json").is_file()
    assert json.loads((tmp_path / "out" / "promotion.json").read_text())["model_id"] == champion["model_id"]
    assert not list((tmp_path / "registry").glob(".champion.json.*")), "temp file left behind"


def test_backfilled_day_does_not_replace_a_newer_champion(tmp_path, candidate):
    champions.promote(tmp_path / "registry", "2026-11-05", *candidate)
    outcome = promote.run(decision_file(tmp_path, True), "2026-11-01", *candidate, tmp_path / "out", params(tmp_path))
    assert not outcome["promoted"] and "later day" in outcome["reason"]
    assert champions.current(tmp_path / "registry")["day"] == "2026-11-05"


def test_baseline_is_the_champion_before_the_day(tmp_path, candidate):
    reg = tmp_path / "registry"
    assert champions.baseline_for(reg, "2026-11-01") is None
    first = champions.promote(reg, "2026-11-01", *candidate)
    (candidate[1] / "ranker.json").write_text('{"changed": 1}')
    second = champions.promote(reg, "2026-11-02", *candidate)
    assert first["model_id"] != second["model_id"]
    assert champions.baseline_for(reg, "2026-11-01") is None          # a rerun of day 1 sees no champion
    assert champions.baseline_for(reg, "2026-11-02")["model_id"] == first["model_id"]
    assert champions.baseline_for(reg, "2026-11-03")["model_id"] == second["model_id"]
    assert "promoted_at" not in champions.baseline_for(reg, "2026-11-03")  # stable across reruns


def two_days(reg, candidate):
    first = champions.promote(reg, "2026-11-01", *candidate)
    (candidate[1] / "ranker.json").write_text('{"changed": 1}')
    second = champions.promote(reg, "2026-11-02", *candidate)
    return first, second


def test_after_a_rollback_later_days_compare_with_the_restored_champion(tmp_path, candidate):
    reg = tmp_path / "registry"
    first, second = two_days(reg, candidate)
    champions.rollback(reg)
    # Days after the withdrawn model's day are measured against what serves, not against it.
    assert champions.baseline_for(reg, "2026-11-03")["model_id"] == first["model_id"]
    assert champions.baseline_for(reg, "2026-11-02")["model_id"] == first["model_id"]  # unchanged
    assert champions.baseline_for(reg, "2026-11-01") is None
    # Rolled forward again: it is the baseline again.
    champions.rollback(reg, to=second["model_id"])
    assert champions.baseline_for(reg, "2026-11-03")["model_id"] == second["model_id"]


def test_a_rerun_does_not_re_promote_a_rolled_back_model(tmp_path, candidate):
    reg = tmp_path / "registry"
    first, second = two_days(reg, candidate)
    champions.rollback(reg)
    # The second day rerun rebuilds byte-identical files: the same model id as the withdrawn one.
    outcome = promote.run(decision_file(tmp_path, True), "2026-11-02", *candidate, tmp_path / "out", params(tmp_path))
    assert not outcome["promoted"] and f"model {second['model_id']} was rolled back" in outcome["reason"]
    assert champions.current(reg)["model_id"] == first["model_id"]
    # A retrained candidate (other files) is promoted as usual.
    (candidate[1] / "ranker.json").write_text('{"changed": 2}')
    outcome = promote.run(decision_file(tmp_path, True), "2026-11-02", *candidate, tmp_path / "out", params(tmp_path))
    assert outcome["promoted"] and champions.current(reg)["model_id"] == outcome["model_id"]


def test_history_written_before_rollbacks_existed_reads_as_promotions(tmp_path, candidate):
    reg = tmp_path / "registry"
    first, second = two_days(reg, candidate)
    lines = [json.loads(line) for line in (reg / "history.jsonl").read_text().splitlines()]
    (reg / "history.jsonl").write_text("".join(json.dumps({k: v for k, v in line.items() if k != "event"}) + "\n"
                                               for line in lines))
    assert [p["model_id"] for p in champions.live_promotions(champions.history(reg))] == [first["model_id"],
                                                                                         second["model_id"]]
    assert champions.rollback(reg)["model_id"] == first["model_id"]
