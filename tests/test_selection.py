"""The estimator selection: what the retrain resolves it to, and the weekly DAG that benchmarks the recent
days through the weekly DVC stage, writes the selection file, commits and publishes the week, and changes
the estimator the next retrain scores with (tests/test_weekly_stage.py: the stage itself)."""
import json
from datetime import datetime, timezone

import pytest
import yaml
from conftest import (
    DAY,
    NEXT_DAY,
    ROOT,
    make_workspace,
    repro,
    run,
    simulate,
    tiny_params,
)

from pipeline.importance import selection
from pipeline.ops import lease
from pipeline.release import history


def write_selection(workspace, content):
    path = workspace / selection.SELECTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_params_decide_without_a_selection_or_with_it_turned_off(tmp_path):
    params = tiny_params()
    assert selection.resolve(tmp_path, params) == {"estimator": params["importance"]["estimator"],
                                                   "transform": selection.transform_of(params), "source": "params"}
    write_selection(tmp_path, {"estimator": "click_model", "transform": {"clip": [0.5, 2.0]}, "reason": "won"})
    chosen = selection.resolve(tmp_path, params)
    assert chosen["estimator"] == "click_model" and chosen["source"] == str(selection.SELECTION_FILE)
    applied = selection.apply(params, chosen)["importance"]
    assert applied["estimator"] == "click_model" and applied["clip"] == [0.5, 2.0]
    assert applied["temperature"] == params["importance"]["temperature"]  # knobs the selection leaves alone
    off = {**params, "importance": {**params["importance"], "use_selection": False}}
    assert selection.resolve(tmp_path, off)["source"] == "params"


def test_a_selection_without_a_winner_leaves_params_and_a_broken_one_is_named(tmp_path):
    params = tiny_params()
    write_selection(tmp_path, {"estimator": None, "transform": {}, "reason": "no estimator"})
    assert selection.resolve(tmp_path, params)["source"] == "params"
    write_selection(tmp_path, {"estimator": "click_model", "transform": {"clipping": 3}})
    with pytest.raises(ValueError, match="clipping"):
        selection.resolve(tmp_path, params)
    write_selection(tmp_path, ["click_model"])
    with pytest.raises(ValueError, match="estimator.json"):
        selection.resolve(tmp_path, params)


@pytest.mark.slow
def test_weekly_dag_selects_an_estimator_that_the_next_retrain_scores_with(airflow_db, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    params = tiny_params()
    # On a tiny log every recovery is noise: the baselines' floor is off so that one estimator is chosen.
    params["benchmark"].update(estimators="click_model,position_ipw", days=2, removal_fractions=[0.1],
                               min_recovery_gap=0.0, min_cost_se=0.0, tie_tolerance=0.0, beat_baselines=False,
                               train_seeds=1)
    workspace = make_workspace(tmp_path / "ws", params)
    simulate(workspace, DAY, days=2)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("sieve_estimator_benchmark")
    monkeypatch.setenv("SIEVE_WORKSPACE", str(workspace))
    # The Monday run after the simulated days: its interval is the week before, up to Sunday 2026-11-08.
    dag_run = dag.test(logical_date=datetime(2026, 11, 9, tzinfo=timezone.utc))
    assert dag_run.state == "success"

    result = json.loads((workspace / "work/benchmark/until=2026-11-08/benchmark.json").read_text())
    assert result["log"]["days"] == [DAY, NEXT_DAY]
    # The simulated days carry truth: the selection goes by the recovery on the true-relevance NDCG.
    assert result["primary_metric"] == result["selection"]["rule"]["metric"] == "ndcg_at_10_true"
    assert all(result["estimators"][name]["recovery"] == result["estimators"][name]["recovery_by_metric"][
        "ndcg_at_10_true"]["recovery"] for name in ("click_model", "position_ipw"))
    recoveries = {name: result["estimators"][name]["recovery"] for name in ("click_model", "position_ipw")}
    chosen = json.loads((workspace / selection.SELECTION_FILE).read_text())
    assert chosen["estimator"] == max(recoveries, key=recoveries.get) != params["importance"]["estimator"]
    # The stage ran through DVC, the week is a commit tagged and published, and the lease is free again.
    lock = yaml.safe_load((workspace / selection.WEEKLY_LOCK).read_text())["stages"][selection.WEEKLY_STAGE]
    assert [out["path"] for out in lock["outs"]] == ["work/benchmark/until=2026-11-08"]
    assert not (workspace / "selection/estimator.json.dvc").exists()  # git keeps the selection
    tag = history.week_tag("2026-11-08")
    assert run(["git", "tag", "--list", tag], workspace / "dvc-remote.git").stdout.split() == [tag]
    assert lease.read(workspace)["holder"] is None

    assert repro(workspace, NEXT_DAY, "validate", "corpus", "pretrain", "importance_shard", "importance").returncode == 0
    assert json.loads((workspace / "run/estimator.json").read_text())["estimator"] == chosen["estimator"]
    metrics = json.loads((workspace / f"work/importance/dt={NEXT_DAY}/metrics.json").read_text())
    assert metrics["estimator"] == chosen["estimator"]
