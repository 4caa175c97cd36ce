"""Shapes real logs take (issue 19, tests/shapes.py) through every stage: each ends in a gate decision,
or stops with one line naming what is missing and the params key to turn, never a traceback.

Every shape runs the stage commands in this process (validate, corpus, pretrain, importance, train,
evaluate, gate: what `python -m pipeline STAGE` runs, without a new interpreter per stage); a few
shapes also go through every registered estimator, and one grocery-like log through `dvc repro`.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import shapes
from conftest import DAY, NEXT_DAY, ROOT, make_workspace, repro, simulate, tiny_params
from pipeline.__main__ import main as cli
from pipeline.data.contract import read_impressions
from pipeline.model.features import holdout_mask

# A refusal expected of a shape: (stage, exit code, text its first line must hold).
REFUSED = {"few_requests": ("validate", 1, "validate.min_requests=20")}
# Shapes every registered estimator scores: the ones that change the rows' structure or labels.
ESTIMATOR_SHAPES = ("null_all", "recommend_only", "few_clicks", "one_item_per_request", "long_lists")


def shape_params() -> dict:
    params = tiny_params()
    params["simulate"]["n_items"] = 800  # fewer titles to embed; a day still shows most of them once
    params["evaluate"]["bootstrap"]["resamples"] = 20  # the intervals' width is not what these tests judge
    # Lists of 100 make a tiny day of ~30 requests, whose few queries are nearly all new: drift on
    # that share fails only on a gross change here (as tiny_params does for new items).
    params["validate"]["drift"]["checks"]["new_query_share"].update(warn=0.97, fail=1.0)
    # The EM estimators' iterations and the recorded runs' epochs cut to what shows they run.
    estimators = params["importance"]["estimators"]
    for name in ("noise_mixture", "click_model"):
        estimators[name]["iterations"] = 10
    for name in ("aum", "forgetting"):
        estimators[name].update(epochs=2, checkpoints_per_epoch=1)
    estimators["data_oob"].update(bags=4, epochs=1)
    return params


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """Two tiny simulated days and the params the shapes run with."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "params.yaml").write_text(yaml.safe_dump(shape_params(), sort_keys=False))
    simulate(root, DAY, days=2)
    return root


def shaped(simulated: Path, folder: Path, shape: str) -> Path:
    """A copy of the two days, both rewritten in `shape` (the earlier one is the drift window)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(simulated / "data" / "raw", folder / "raw")
    shutil.copy(simulated / "params.yaml", folder / "params.yaml")
    for day in (DAY, NEXT_DAY):
        shapes.write_shape(folder / "raw", shape, day)
    return folder


def stage(capsys, name: str, *args: str) -> tuple[int, str, str]:
    """One stage command in this process: an uncaught exception (a traceback) fails the test."""
    capsys.readouterr()
    code = cli([name, *args])
    out, err = capsys.readouterr()
    return code, out, err


def held_out_clicks(raw: Path, params: dict) -> int:
    """Independent of evaluate: the clicks of the day's last requests (split.holdout_fraction)."""
    impressions = read_impressions(raw, NEXT_DAY)
    return int(impressions["clicked"][holdout_mask(impressions, params["split"]["holdout_fraction"])].sum())


def run_stages(capsys, ws: Path) -> tuple[str, int, str, str]:
    """Validate through gate on the later day; (the last stage run, its exit code, stdout, stderr)."""
    raw, params, work = str(ws / "raw"), str(ws / "params.yaml"), ws / "work"
    (ws / "baseline.json").write_text(json.dumps({"champion": None}))
    commands = [
        ("validate", "--data", raw, "--day", NEXT_DAY, "--params", params, "--out", str(work / "validate")),
        ("corpus", "--data", raw, "--day", NEXT_DAY, "--out", str(work / "corpus")),
        ("pretrain", "--corpus", str(work / "corpus"), "--params", params, "--out", str(work / "pretrain")),
        ("importance", "--data", raw, "--day", NEXT_DAY, "--embeddings", str(work / "pretrain/embeddings"),
         "--params", params, "--out", str(work / "importance")),
        ("train", "--data", raw, "--day", NEXT_DAY, "--embeddings", str(work / "pretrain/embeddings"),
         "--encoder", str(work / "pretrain/encoder"), "--weights", str(work / "importance/scores.parquet"),
         "--params", params, "--out", str(work / "train"), "--checkpoints", str(work / "checkpoints")),
        ("evaluate", "--data", raw, "--day", NEXT_DAY, "--embeddings", str(work / "pretrain/embeddings"),
         "--encoder", str(work / "pretrain/encoder"), "--model", str(work / "train/model"),
         "--baseline", str(ws / "baseline.json"), "--params", params, "--out", str(work / "evaluate")),
        ("gate", "--metrics", str(work / "evaluate/metrics.json"), "--params", params, "--out", str(work / "gate")),
    ]
    for name, *args in commands:
        code, out, err = stage(capsys, name, *args)
        if code != 0:
            return name, code, out, err
    return "gate", 0, out, err


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_every_stage_ends_in_a_decision_or_a_named_refusal(simulated, tmp_path, capsys, shape):
    ws = shaped(simulated, tmp_path / shape, shape)
    last, code, out, err = run_stages(capsys, ws)
    if shape in REFUSED:
        where, expected_code, text = REFUSED[shape]
        assert (last, code) == (where, expected_code), err
        assert text in err.splitlines()[0]
        assert not (ws / "work" / "train").exists()  # nothing downstream ran
        return
    assert code == 0, f"{last} exited {code}: {err}"
    decision = json.loads((ws / "work/gate/decision.json").read_text())
    params = yaml.safe_load((ws / "params.yaml").read_text())
    clicks = held_out_clicks(ws / "raw", params)
    assert decision["decision"] in ({"NOT_ENOUGH_EVIDENCE"} if clicks < params["gate"]["min_clicks"]
                                    else {"BLESSED", "NOT_BLESSED"}), (clicks, decision["reason"])
    if decision["decision"] == "NOT_BLESSED":
        assert "gate." in decision["reason"]  # the failed threshold's params key
    if decision["decision"] == "NOT_ENOUGH_EVIDENCE":
        assert f"{clicks} held-out clicks" in decision["reason"] and "gate.min_clicks" in decision["reason"]
    default_gate_decides(capsys, ws, clicks)
    if shape == "no_purchases" and decision["decision"] != "NOT_ENOUGH_EVIDENCE":
        assert "auc_purchase" not in {c["metric"] for c in decision["checks"] if c["slice"] == "overall"}
    if shape in ESTIMATOR_SHAPES:
        every_estimator_scores(ws)


def default_gate_decides(capsys, ws: Path, clicks: int) -> None:
    """The project's own gate (ranking checks, purchase AUC, ...) on the same metrics also decides."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["gate"] = yaml.safe_load((ROOT / "params.yaml").read_text())["gate"]
    (ws / "default.yaml").write_text(yaml.safe_dump(params))
    code, _, err = stage(capsys, "gate", "--metrics", str(ws / "work/evaluate/metrics.json"),
                         "--params", str(ws / "default.yaml"), "--out", str(ws / "work/default_gate"))
    assert code == 0, err
    decision = json.loads((ws / "work/default_gate/decision.json").read_text())
    enough = clicks >= params["gate"]["min_clicks"]
    assert decision["decision"] in ({"BLESSED", "NOT_BLESSED"} if enough else {"NOT_ENOUGH_EVIDENCE"})
    if decision["decision"] == "NOT_BLESSED":
        assert "gate." in decision["deciding_check"]["detail"], decision["reason"]


def every_estimator_scores(ws: Path) -> None:
    """Each registered estimator scores every row of the shaped day with a finite score, or refuses with a
    ValueError naming itself and its params key (the importance command prints it as one line, exit 2)."""
    from pipeline.compute import setup
    from pipeline.model.dataset import load_log
    from pipeline.importance import registry
    from pipeline.importance.scores import checked_scores
    from pipeline.params import load_params, stage_seed

    params = load_params(ws / "params.yaml")
    data = load_log(ws / "raw", [NEXT_DAY], ws / "work/pretrain/embeddings", params)
    for name, estimator in sorted(registry.available().items()):
        seed = stage_seed(params, f"importance:{name}")
        try:
            scores = estimator.score(registry.Context(data, params, seed, setup(params, seed)))
        except ValueError as refusal:  # e.g. el2n when a fold's training rows hold no click
            assert str(refusal).startswith(name) and "importance." in str(refusal), (name, str(refusal))
            continue
        table = checked_scores(data.impressions["event_id"], scores, name)
        assert len(table) == len(data.impressions) and np.isfinite(table["score"]).all(), name


def grocery(imp, catalog):
    """The grocery log of the finding: recommendations only, no brand at all, propensity null, one f_*
    column, every row of a request at one time."""
    imp, catalog = shapes.transform("recommend_only", imp, catalog)
    imp, catalog = shapes.transform("null_brand", imp, catalog)
    imp, catalog = shapes.transform("null_propensity", imp, catalog)
    imp = imp.drop(columns=["f_device"])
    imp["ts"] = imp.groupby("request_id")["ts"].transform("min")
    return imp, catalog


def test_grocery_like_log_runs_end_to_end_through_dvc(simulated, tmp_path):
    """The finding's first real log (it died in id_hashes and in corpus), through `dvc repro` with its
    earlier day as the drift window: every stage runs, and promote follows the gate's decision."""
    ws = make_workspace(tmp_path / "ws", yaml.safe_load((simulated / "params.yaml").read_text()))
    shutil.copytree(simulated / "data" / "raw", ws / "data" / "raw", dirs_exist_ok=True)
    for day in (DAY, NEXT_DAY):
        shapes.write_shape(ws / "data/raw", grocery, day)
    repro(ws, NEXT_DAY)
    decision = json.loads((ws / "work/gate/decision.json").read_text())
    promotion = json.loads((ws / "work/promote/promotion.json").read_text())
    assert decision["day"] == NEXT_DAY and decision["decision"] in ("BLESSED", "NOT_BLESSED", "NOT_ENOUGH_EVIDENCE")
    assert promotion["promoted"] == decision["blessed"], promotion["reason"]
    assert (ws / "registry" / "champion.json").exists() == decision["blessed"]
