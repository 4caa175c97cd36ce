"""The importance stage in shards through DVC: shard stages run side by side in one workspace, the
combine stage weights them as one unsharded run would, and only the knobs a stage reads rerun it."""
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import DAY, make_workspace, repro, run, simulate, tiny_params
from pipeline.ops import lease

pytestmark = pytest.mark.slow

SHARDS = 2


def start_repro(workspace, holder, *stages):
    return subprocess.Popen([sys.executable, "-m", "pipeline", "repro", "--workspace", str(workspace), "--day", DAY,
                             "--holder", holder, *stages], cwd=workspace, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def set_params(workspace, **importance):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["importance"].update(importance)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A workspace whose two shard stages ran at the same time, then the combine."""
    params = tiny_params()
    params["importance"]["shards"] = SHARDS
    workspace = make_workspace(tmp_path_factory.mktemp("sharded") / "ws", params)
    simulate(workspace, DAY)
    repro(workspace, DAY, "validate", "corpus", "pretrain")
    # As the DAG's mapped tasks do: one run holds the workspace's lease, its shard stages share it.
    assert lease.acquire(workspace, "run-1", DAY, stale_after=60) is None
    procs = [start_repro(workspace, "run-1", f"importance_shard@{k}") for k in range(SHARDS)]
    outputs = [proc.communicate()[0] for proc in procs]
    lease.release(workspace, "run-1")
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output
    combine = repro(workspace, DAY, "importance")
    return workspace, outputs, combine


def test_concurrent_shard_stages_both_land_in_dvc_lock(sharded):
    workspace, outputs, _ = sharded
    for k, output in enumerate(outputs):
        assert f"Running stage 'importance_shard@{DAY}-{k}'" in output, output
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    for k in range(SHARDS):
        out = lock["stages"][f"importance_shard@{DAY}-{k}"]["outs"][0]["path"]
        assert out == f"work/importance_shards/dt={DAY}/{k}-of-{SHARDS}"
    status = run([sys.executable, "-m", "dvc", "status", "importance_shard", "importance"], workspace)
    assert "up to date" in status.stdout, status.stdout


def test_combined_scores_equal_an_unsharded_run(sharded, tmp_path):
    workspace, _, _ = sharded
    combined = pd.read_parquet(workspace / f"work/importance/dt={DAY}/scores.parquet")
    run([sys.executable, "-m", "pipeline", "importance", "--data", "data/raw", "--day", DAY,
         "--params", "params.yaml", "--out", str(tmp_path / "whole")],
        workspace)
    whole = pd.read_parquet(tmp_path / "whole/scores.parquet")
    assert combined["event_id"].is_unique and len(combined) == len(whole)
    pd.testing.assert_frame_equal(combined.sort_values("event_id").reset_index(drop=True),
                                  whole.sort_values("event_id").reset_index(drop=True))


def test_a_new_weight_transform_reruns_the_combine_only(sharded):
    workspace, _, _ = sharded
    before = pd.read_parquet(workspace / f"work/importance/dt={DAY}/scores.parquet")
    set_params(workspace, clip=[0.5, 1.5])
    result = repro(workspace, DAY, "importance_shard", "importance")
    assert f"Running stage 'importance@{DAY}'" in result.stdout, result.stdout
    assert "Running stage 'importance_shard" not in result.stdout, result.stdout
    after = pd.read_parquet(workspace / f"work/importance/dt={DAY}/scores.parquet")
    assert after["score"].equals(before["score"])
    assert after["weight"].max() < before["weight"].max()


def test_a_new_shard_count_rescores_and_drops_the_old_shards(sharded):
    workspace, _, _ = sharded
    set_params(workspace, shards=3)
    result = repro(workspace, DAY, "importance_shard", "importance")
    assert result.stdout.count("Running stage 'importance_shard@") == 3, result.stdout
    folders = sorted(p.name for p in (workspace / f"work/importance_shards/dt={DAY}").iterdir() if p.is_dir())
    assert folders == ["0-of-3", "1-of-3", "2-of-3"]
    scores = pd.read_parquet(workspace / f"work/importance/dt={DAY}/scores.parquet")
    assert scores["event_id"].is_unique and scores["weight"].mean() == pytest.approx(1.0)


@pytest.mark.parametrize("shards, stage, message", [
    (2, "importance_shard@2", "importance.shards is 2, so the shards are importance_shard@0 to importance_shard@1"),
    (0, "importance_shard", "importance.shards must be a whole number of at least 1, got 0"),
])
def test_a_shard_outside_the_plan_is_refused(tmp_path, shards, stage, message):
    params = tiny_params()
    params["importance"]["shards"] = shards
    workspace = make_workspace(tmp_path / "ws", params)
    result = repro(workspace, DAY, stage, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
