"""The train stage's loop: a run killed mid-way resumes to the same weights, early stopping keeps the
best epoch, gradient accumulation and torchrun (DDP, each rank a share of every step's batch) give
the gradient of the same batch."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import DAY, make_workspace, repro, simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    """A workspace of its own with the stages before train done for DAY (the shared completed run
    moves on to the next day in other modules, and its embeddings with it)."""
    workspace = make_workspace(tmp_path_factory.mktemp("training") / "ws")
    simulate(workspace, DAY)
    repro(workspace, DAY, "validate", "corpus", "pretrain", "importance_shard", "importance")
    return workspace


def train_params(completed_run, tmp_path, name, **train):
    params = yaml.safe_load((completed_run / "params.yaml").read_text())
    params["train"].update(train)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def train_cmd(completed_run, params, out, checkpoints=None, launcher=()):
    cmd = [*launcher, "-m", "pipeline", "train", "--data", str(completed_run / "data/raw"), "--day", DAY,
           "--embeddings", str(completed_run / "work/pretrain/embeddings"),
           "--weights", str(completed_run / f"work/importance/dt={DAY}/scores.parquet"),
           "--params", str(params), "--out", str(out)]
    return cmd + (["--checkpoints", str(checkpoints)] if checkpoints else [])


def train(completed_run, params, out, checkpoints=None):
    result = subprocess.run([sys.executable, *train_cmd(completed_run, params, out, checkpoints)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def weights(out: Path) -> dict:
    return load_file(str(out / "model/ranker.safetensors"))


def metrics(out: Path) -> dict:
    return yaml.safe_load((out / "metrics.json").read_text())


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# Small batches and many epochs: thousands of steps, so a kill after the first checkpoint lands mid-run.
SLOW = dict(batch_size=8, epochs=12, checkpoint_every_steps=20, early_stopping={"patience": 0, "min_delta": 0.0})


def test_a_killed_run_resumes_to_the_same_weights(completed_run, tmp_path):
    params = train_params(completed_run, tmp_path, "slow", **SLOW)
    train(completed_run, params, tmp_path / "whole", tmp_path / "ckpt-whole")
    assert not (tmp_path / "ckpt-whole").exists()  # cleared once the run succeeded

    checkpoints = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, *train_cmd(completed_run, params, tmp_path / "killed", checkpoints)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed").exists()  # no partial output
    left = sorted(p.name for p in checkpoints.glob("step-*"))
    assert left and int(left[-1].split("-")[1]) > 0

    output = train(completed_run, params, tmp_path / "killed", checkpoints)

    assert "resumed from step" in output
    resumed = metrics(tmp_path / "killed")["resumed_from_step"]
    assert resumed is not None and 0 < resumed < metrics(tmp_path / "whole")["steps"]
    assert_same(weights(tmp_path / "killed"), weights(tmp_path / "whole"))
    assert metrics(tmp_path / "killed")["final_weighted_loss"] == metrics(tmp_path / "whole")["final_weighted_loss"]
    # The step curve too: the steps before the kill come back from beside the checkpoints.
    for curve in ("loss.tsv", "learning_rate.tsv"):
        path = f"live/plots/metrics/{curve}"
        assert (tmp_path / "killed" / path).read_bytes() == (tmp_path / "whole" / path).read_bytes(), curve


def test_a_checkpoint_of_other_inputs_is_not_resumed(completed_run, tmp_path):
    slow = train_params(completed_run, tmp_path, "slow", **SLOW)
    checkpoints = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, *train_cmd(completed_run, slow, tmp_path / "a", checkpoints)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not any(checkpoints.glob("step-*")) and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    other = train_params(completed_run, tmp_path, "other", **{**SLOW, "epochs": 1, "learning_rate": 0.001})
    output = train(completed_run, other, tmp_path / "b", checkpoints)
    assert "from another run" in output and "resumed from step" not in output
    assert metrics(tmp_path / "b")["resumed_from_step"] is None


def test_early_stopping_keeps_the_best_epoch(completed_run, tmp_path):
    # A learning rate this high overfits the tiny day within a few epochs.
    params = train_params(completed_run, tmp_path, "stop", epochs=12, learning_rate=0.03, batch_size=64,
                          early_stopping={"patience": 1, "min_delta": 0.0})
    train(completed_run, params, tmp_path / "stop")
    result = metrics(tmp_path / "stop")
    assert result["stopped_early"] and result["epochs"] < 12
    losses = result["validation_loss"]
    assert result["best_epoch"] == 1 + losses.index(min(losses))
    assert losses[-1] >= min(losses)
    # The kept weights are the best epoch's: a run of exactly that many epochs ends with the same ones.
    exact = train_params(completed_run, tmp_path, "exact", epochs=result["best_epoch"], learning_rate=0.03,
                         batch_size=64, early_stopping={"patience": 0, "min_delta": 0.0})
    train(completed_run, exact, tmp_path / "exact")
    a, b = weights(tmp_path / "stop"), weights(tmp_path / "exact")
    for key in a:
        if key != "click_calibration":
            assert torch.equal(a[key], b[key]), key


def test_one_step_and_gradient_accumulation(completed_run, tmp_path):
    one = train_params(completed_run, tmp_path, "one", max_steps=1)
    train(completed_run, one, tmp_path / "one")
    assert metrics(tmp_path / "one")["steps"] == 1
    # Without dropout, 2 micro-batches of 32 per step train like one batch of 64.
    base = dict(epochs=1, early_stopping={"patience": 0, "min_delta": 0.0})
    for name, knobs in (("b64", dict(batch_size=64)), ("b32x2", dict(batch_size=32, accumulation_steps=2))):
        path = train_params(completed_run, tmp_path, name, **base, **knobs)
        params = yaml.safe_load(path.read_text())
        params["ranker"]["dropout"] = 0.0
        path.write_text(yaml.safe_dump(params))
        train(completed_run, path, tmp_path / name)
    assert metrics(tmp_path / "b64")["steps"] == metrics(tmp_path / "b32x2")["steps"]
    assert_trained_alike(weights(tmp_path / "b64"), weights(tmp_path / "b32x2"))


def assert_trained_alike(a: dict, b: dict) -> None:
    """Two trainings that differ only in float rounding: the trained weights within 1e-4; the Platt
    scaling, fitted to convergence on the trained logits afterwards, moves with them by about their
    rounding difference over the logits' spread, so it gets 1e-3 (a tenfold margin)."""
    assert a.keys() == b.keys()
    for key in a:
        tolerance = 1e-3 if key == "click_calibration" else 1e-4
        assert torch.allclose(a[key], b[key], atol=tolerance), (key, a[key], b[key])


def torchrun(nproc: int):
    return [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_torchrun_trains_like_one_process(completed_run, tmp_path, nproc):
    """DDP on CPU (gloo): one rank gives the same weights as a plain run. Two ranks, each with a
    disjoint batch of 64 rows per step, train like one process with batches of 128 (the same shuffled
    order), up to float rounding (without dropout, whose masks differ per rank)."""
    def params_with(name, batch_size):
        path = train_params(completed_run, tmp_path, name, epochs=1, batch_size=batch_size,
                            early_stopping={"patience": 0, "min_delta": 0.0})
        raw = yaml.safe_load(path.read_text())
        raw["ranker"]["dropout"] = 0.0
        path.write_text(yaml.safe_dump(raw))
        return path

    train(completed_run, params_with("plain", 64 * nproc), tmp_path / "plain")
    result = subprocess.run(train_cmd(completed_run, params_with("ddp", 64), tmp_path / "ddp",
                                      launcher=torchrun(nproc)),
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert metrics(tmp_path / "ddp")["world_size"] == nproc
    assert metrics(tmp_path / "ddp")["steps"] == metrics(tmp_path / "plain")["steps"]
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ddp")
    if nproc == 1:
        for key in a:
            assert torch.equal(a[key], b[key]), key
    else:
        assert_trained_alike(a, b)
