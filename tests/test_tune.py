"""A sweep as DVC experiments (`python -m pipeline tune`): queued with `dvc exp run --queue -S`, run
up to the gate against the champion, listed by `dvc exp show`, and promoted only when blessed."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import NEXT_DAY, run
from pipeline.ops import tune
from pipeline.release import champions, history

THRESHOLD = "gate.checks.auc_click.min_value"
# 0.5 passes on the tiny day (as every plumbing run shows), 0.999 no tiny model reaches: one
# experiment blessed, one not, both from the same trained candidate.
GRID = {THRESHOLD: [0.5, 0.999]}


def tune_cli(workspace: Path, grid: Path, *extra: str):
    return run([sys.executable, "-m", "pipeline", "tune", "--workspace", str(workspace), "--day", NEXT_DAY,
                "--grid", str(grid), *extra], workspace, check=False)


def git(workspace: Path, *args: str) -> str:
    return run(["git", *args], workspace).stdout.strip()


@pytest.fixture(scope="module")
def swept(completed_run, tmp_path_factory) -> dict:
    workspace = shutil.copytree(completed_run, tmp_path_factory.mktemp("tune") / "ws", symlinks=True)
    grid = workspace.parent / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    before = {"champion": champions.current(workspace / "registry"), "head": git(workspace, "rev-parse", "HEAD")}
    result = tune_cli(workspace, grid)
    return {"workspace": workspace, "grid": grid, "before": before, "result": result}


@pytest.mark.slow
def test_a_two_point_sweep_is_two_experiments_that_dvc_exp_show_lists(swept):
    workspace, result = swept["workspace"], swept["result"]
    assert result.returncode == 0, result.stderr
    shown = json.loads(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], workspace).stdout)
    experiments = [rev for baseline in shown for group in baseline.get("experiments") or [] for rev in group["revs"]]
    assert len(experiments) == 2
    by_threshold = {}
    for rev in experiments:
        params = rev["data"]["params"]["params.yaml"]["data"]
        metrics = rev["data"]["metrics"]
        evaluated = metrics["work/evaluate/metrics.json"]["data"]
        assert 0.0 <= evaluated["candidate"]["auc_click"] <= 1.0 and evaluated["day"] == NEXT_DAY
        by_threshold[params["gate"]["checks"]["auc_click"]["min_value"]] = metrics["work/gate/decision.json"]["data"]
    assert by_threshold[0.5]["decision"] == "BLESSED" and by_threshold[0.999]["decision"] == "NOT_BLESSED"
    # The command's own table says the same, and names the blessed one as the best.
    (blessed_name,) = [r["name"] for r in experiments
                       if r["data"]["params"]["params.yaml"]["data"]["gate"]["checks"]["auc_click"]["min_value"] == 0.5]
    assert f"best blessed: {blessed_name} " in result.stdout
    # Experiments never touch the champion, nor commit.
    assert champions.current(workspace / "registry") == swept["before"]["champion"]
    assert git(workspace, "rev-parse", "HEAD") == swept["before"]["head"]


@pytest.mark.slow
def test_promote_takes_the_blessed_experiment_through_gate_and_promote(swept):
    workspace, first = swept["workspace"], swept["before"]["champion"]
    result = tune_cli(workspace, swept["grid"], "--promote")
    assert result.returncode == 0, result.stderr
    champion = champions.current(workspace / "registry")
    assert champion["day"] == NEXT_DAY and champion["model_id"] != first["model_id"]
    latest = history.run_commits(workspace)[0]
    assert latest["day"] == NEXT_DAY and latest["run"].startswith("tune:") and latest["champion"] == champion["model_id"]
    committed = yaml.safe_load(git(workspace, "show", "HEAD:params.yaml"))
    assert committed["gate"]["checks"]["auc_click"]["min_value"] == 0.5
    decision = json.loads((workspace / "work/gate/decision.json").read_text())
    assert decision["decision"] == "BLESSED" and decision["baseline"] == first["model_id"]


def test_a_grid_names_params_keys_and_lists_of_single_values(tmp_path):
    params = {"train": {"learning_rate": 0.002}, "ranker": {"hidden": 128}}
    grid = tmp_path / "grid.yaml"
    for text, error in (("train.lr: [1]", "train.lr is not a key"), ("train.learning_rate: 0.1", "needs a list"),
                        ("ranker.hidden: [[1, 2]]", "only single values"), ("[1, 2]", "a YAML mapping")):
        grid.write_text(text)
        with pytest.raises(ValueError, match=error):
            tune.read_grid(grid, params)
    grid.write_text("train.learning_rate: [0.001, 0.004]\nranker.hidden: [64, 128]\n")
    read = tune.read_grid(grid, params)
    assert [tune.override(k, v) for k, v in read.items()] == ["train.learning_rate=0.001,0.004", "ranker.hidden=64,128"]


def test_the_best_experiment_is_the_best_blessed_one():
    found = [{"name": "a", "blessed": False, "score": 0.9}, {"name": "b", "blessed": True, "score": 0.7},
             {"name": "c", "blessed": True, "score": 0.8}, {"name": "d", "blessed": True, "score": None}]
    assert tune.best_blessed(found)["name"] == "c"
    assert tune.best_blessed([found[0]]) is None
