"""The gate against degraded candidates, end to end on a simulated day with the default encoder:
train -> evaluate (true relevance, baselines, bootstrap) -> gate. Each degraded candidate is
NOT_BLESSED with the check that decided named; a properly trained one is BLESSED, also against a
trivial champion."""
import copy
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DAY, ROOT
from pipeline.model import dataset, embeddings, ranker
from pipeline.release import champions
from pipeline.data.simulate import command as simulate
from pipeline.stages import evaluate, gate, train
from pipeline.atomic import write_json_atomic
from pipeline.data.contract import DayPaths
from pipeline.params import load_params

ROWS = 20_000


def default_params() -> dict:
    params = load_params(ROOT / "params.yaml")
    params["compute"]["threads"] = 1
    params["simulate"]["impressions_per_day"] = ROWS
    return params


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A default simulated day, its texts embedded by the default encoder (saved beside them, so a
    promoted model carries it), and uniform weights."""
    from pipeline.model import encoder as enc

    root = tmp_path_factory.mktemp("degraded")
    params = default_params()
    simulate.run(DAY, 1, root / "data", params)
    impressions, catalog = dataset.read_log(root / "data", [DAY])
    texts = sorted(set(catalog["title"].dropna()) | set(impressions["query"].dropna()))
    cfg = params["pretrain"]
    tokenizer, model = enc.load_base(cfg["base_model"], cfg["tiny_bert"], 0)
    model.base_model.save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    vectors = enc.embed(model.base_model, tokenizer, texts, cfg["max_length"], cfg["embed_batch_size"], "cpu")
    embeddings.save(root / "embeddings", texts, vectors)
    pd.DataFrame({"event_id": impressions["event_id"], "weight": 1.0}).to_parquet(root / "weights.parquet")
    write_json_atomic(root / "no_champion.json", {"champion": None})
    return root, params


def trained(day, name, change=None, data=None) -> "Path":
    root, params = day
    params = copy.deepcopy(params)
    if change:
        change(params)
    out = root / "candidates" / name
    if not (out / "model").exists():
        train.run(data or root / "data", DAY, root / "embeddings", root / "weights.parquet", out, params)
    return out / "model"


def judged(day, model_dir, baseline="no_champion.json") -> dict:
    root, params = day
    out = root / "judged" / f"{model_dir.parent.name}-{baseline}"
    evaluate.run(root / "data", DAY, root / "embeddings", model_dir, root / baseline, out / "evaluate", params)
    return gate.run(out / "evaluate/metrics.json", out / "gate", params)


def shuffled_labels(day) -> "Path":
    """A copy of the day whose click and purchase labels are shuffled across its rows."""
    root, _ = day
    copy_dir = root / "shuffled"
    if not copy_dir.exists():
        shutil.copytree(root / "data", copy_dir)
        path = DayPaths(copy_dir, DAY).impressions_dir
        for part in path.glob("*.parquet"):
            frame = pd.read_parquet(part)
            order = np.random.default_rng(7).permutation(len(frame))
            frame[["clicked", "purchased"]] = frame[["clicked", "purchased"]].to_numpy()[order]
            frame.to_parquet(part, index=False)
    return copy_dir


def constant_model(day) -> "Path":
    """The good model with its click and conversion heads zeroed: the same score for every row."""
    root, _ = day
    out = root / "candidates/constant/model"
    if not out.exists():
        model = ranker.load(trained(day, "good"))
        with torch.no_grad():
            for head in (model.click_head, model.conversion_head):
                head.weight.zero_()
        ranker.save(model, out)
    return out


DEGRADED = {
    "two_steps": lambda day: trained(day, "two_steps", lambda p: p["train"].update(max_steps=2)),
    "learning_rate_zero": lambda day: trained(day, "lr0", lambda p: p["train"].update(learning_rate=1e-12)),
    "two_units_one_epoch": lambda day: trained(day, "tiny", lambda p: (p["ranker"].update(hidden=2),
                                                                       p["train"].update(epochs=1))),
    "shuffled_labels": lambda day: trained(day, "shuffled", data=shuffled_labels(day)),
    "constant_score": constant_model,
}


@pytest.mark.parametrize("name", DEGRADED)
def test_a_degraded_candidate_is_not_blessed_and_the_deciding_check_is_named(day, name):
    decision = judged(day, DEGRADED[name](day))
    assert decision["decision"] == "NOT_BLESSED", decision["reason"]
    decider = decision["deciding_check"]
    assert not decider["passed"] and decider["kind"] in ("score_spread", "baseline")
    assert decision["reason"].startswith(f"decided by the {decider['kind']} check on {decider['metric']}")
    if name == "constant_score":
        assert decider["kind"] == "score_spread"


def test_a_trained_candidate_is_blessed_against_a_trivial_champion(day):
    root, params = day
    entry = champions.promote(root / "registry", DAY, root / "encoder", DEGRADED["two_steps"](day))
    write_json_atomic(root / "trivial_champion.json", {"champion": entry})
    params["registry"]["dir"] = str(root / "registry")
    decision = judged(day, trained(day, "good"), "trivial_champion.json")
    assert decision["decision"] == "BLESSED", decision["reason"]
    assert decision["baseline"] == entry["model_id"]
    # It beat the baselines on the bootstrap interval, and the champion on the primary metric.
    assert decision["deciding_check"]["kind"] == "baseline" and decision["deciding_check"]["passed"]
    change = next(c for c in decision["checks"] if c["kind"] == "change" and c["metric"] == decision["primary_metric"])
    assert change["candidate"] > change["champion"]
