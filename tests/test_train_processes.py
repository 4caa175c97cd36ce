"""compute.train_processes: with 2 the train command runs itself as two torchrun ranks (gloo on CPU).
Rank 0 alone writes one model, about as good as one process's and the same on every run; a killed run
resumes to the same weights; a failing rank fails the command and leaves no output."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import DAY, ROOT
from test_training import completed_run, metrics, train_cmd, weights  # noqa: F401  (the module's workspace)

pytestmark = pytest.mark.slow

OUTPUTS = {"loss.csv", "metrics.json", "model/ranker.json", "model/ranker.safetensors",
           "live/plots/metrics/loss.tsv", "live/plots/metrics/learning_rate.tsv"}
# Small batches: enough steps for the model to learn on the tiny day, and for a kill to land mid-run.
KNOBS = dict(batch_size=64, epochs=2, early_stopping={"patience": 0, "min_delta": 0.0})


def params_file(completed_run, tmp_path, name, processes, **train):
    params = yaml.safe_load((completed_run / "params.yaml").read_text())
    params["compute"]["train_processes"] = processes
    params["train"].update(train)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def train(completed_run, params, out, checkpoints=None, env=None):
    return subprocess.run([sys.executable, *train_cmd(completed_run, params, out, checkpoints)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def heldout_quality(completed_run, model_dir) -> tuple[float, float]:
    """(click AUC, click log loss) on the day's held-out rows, as the evaluate stage and the gate see them."""
    from pipeline.model import dataset, ranker
    from pipeline.model.metrics import auc, logloss

    params = yaml.safe_load((completed_run / "params.yaml").read_text())
    data = dataset.load_day(completed_run / "data/raw", DAY, completed_run / "work/pretrain/embeddings", params)
    x = data.x.subset(torch.as_tensor(data.holdout_index))
    p_click = ranker.predict(ranker.load(model_dir), x, "cpu", True)["p_click"]
    return auc(x.click.numpy(), p_click), logloss(x.click.numpy(), p_click)


def test_two_processes_write_one_model_as_good_as_one_and_reproducible(completed_run, tmp_path):
    one = params_file(completed_run, tmp_path, "one", 1, **KNOBS)
    two = params_file(completed_run, tmp_path, "two", 2, **KNOBS)
    assert train(completed_run, one, tmp_path / "one/train").returncode == 0
    runs = []
    for attempt in ("a", "b"):
        result = train(completed_run, two, tmp_path / attempt / "train")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "launch: 2 processes" in result.stdout
        assert result.stdout.count(f"train: {DAY}") == 1, result.stdout  # only rank 0 reports and writes
        # One model and nothing beside it: no second copy, no temporary folder left by a rank.
        assert [p.name for p in (tmp_path / attempt).iterdir()] == ["train"]
        assert files(tmp_path / attempt / "train") == OUTPUTS
        runs.append(tmp_path / attempt / "train")

    first, single = metrics(runs[0]), metrics(tmp_path / "one/train")
    assert first["world_size"] == 2 and single["world_size"] == 1
    # Each step takes 2 x batch_size rows: half the steps of one process, over the same rows.
    assert first["train_rows"] == single["train_rows"]
    assert first["steps"] == KNOBS["epochs"] * -(-first["train_rows"] // (2 * KNOBS["batch_size"]))
    assert single["steps"] == KNOBS["epochs"] * -(-single["train_rows"] // KNOBS["batch_size"])
    # Rank 0 alone writes the step curve: a row per step of the global batch, byte for byte on a rerun.
    curve = pd.read_csv(runs[0] / "live/plots/metrics/loss.tsv", sep="\t")
    assert list(curve["step"]) == list(range(1, first["steps"] + 1)) and np.isfinite(curve["loss"]).all()
    assert (runs[0] / "live/plots/metrics/loss.tsv").read_bytes() == (runs[1] / "live/plots/metrics/loss.tsv").read_bytes()
    a, b, c = weights(runs[0]), weights(runs[1]), weights(tmp_path / "one/train")
    for key in a:
        assert torch.equal(a[key], b[key]), key  # the same for a given number of processes
    assert any(not torch.equal(a[key], c[key]) for key in a)  # but not the one-process model

    # Comparable, not equal: the tiny day's held-out slice (about 600 rows) moves by a few hundredths
    # between any two retrains, so these bounds catch a broken run, not a slightly different one.
    (two_auc, two_loss), (one_auc, one_loss) = (heldout_quality(completed_run, out / "model")
                                                for out in (runs[0], tmp_path / "one/train"))
    assert two_auc > 0.6 and abs(two_auc - one_auc) < 0.03, (two_auc, one_auc)
    assert abs(two_loss - one_loss) < 0.02, (two_loss, one_loss)
    # The reported training loss is over both ranks' rows, not rank 0's half alone.
    assert abs(first["final_weighted_loss"] - single["final_weighted_loss"]) < 0.05 * single["final_weighted_loss"]


def test_two_processes_resume_a_killed_run_to_the_same_weights(completed_run, tmp_path):
    params = params_file(completed_run, tmp_path, "two", 2, **{**KNOBS, "batch_size": 16, "epochs": 3,
                                                                  "checkpoint_every_steps": 10})
    whole = train(completed_run, params, tmp_path / "whole", tmp_path / "ckpt-whole")
    assert whole.returncode == 0, whole.stdout + whole.stderr

    checkpoints = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, *train_cmd(completed_run, params, tmp_path / "killed", checkpoints)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # What a scheduler's kill sends: torchrun (the command's own process) passes it on to the ranks.
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) != 0, "the run finished before it could be killed"
    assert not (tmp_path / "killed").exists()

    result = train(completed_run, params, tmp_path / "killed", checkpoints)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("resumed from step") == 1
    resumed = metrics(tmp_path / "killed")["resumed_from_step"]
    assert resumed is not None and 0 < resumed < metrics(tmp_path / "whole")["steps"]
    a, b = weights(tmp_path / "killed"), weights(tmp_path / "whole")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics(tmp_path / "killed")["final_weighted_loss"] == metrics(tmp_path / "whole")["final_weighted_loss"]


# Loaded at start-up by every Python process of the command (PYTHONPATH); only rank 1 is changed.
FAIL_RANK_1 = textwrap.dedent("""
    import os
    if os.environ.get("RANK") == "1":
        import pipeline.model.training as training

        def fail(*args, **kwargs):
            raise RuntimeError("rank 1 fails on purpose")

        if os.environ["FAIL_WHERE"] == "step":
            step = training._step
            training._step = lambda *a, **k: fail() if a[-1].step == 3 else step(*a, **k)
        else:  # rank 1 trains to the end, then fails while rank 0 could go on to write
            fit = training.fit
            training.fit = lambda *a, **k: (fit(*a, **k), fail())
""")


@pytest.mark.parametrize("where", ["step", "after_fit"])
def test_a_failing_rank_fails_the_command_and_leaves_no_output(completed_run, tmp_path, where):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_RANK_1)
    params = params_file(completed_run, tmp_path, "two", 2, **KNOBS)
    path = os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")])
    started = time.monotonic()
    result = train(completed_run, params, tmp_path / "run/train", env={"PYTHONPATH": path, "FAIL_WHERE": where})
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stdout + result.stderr
    assert time.monotonic() - started < 300  # torchrun stopped rank 0; it did not wait out a timeout
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_the_knob_takes_a_whole_number_of_at_least_one(value):
    from pipeline.model import launch

    with pytest.raises(ValueError, match="compute.train_processes"):
        launch.processes({"compute": {"train_processes": value}})
    assert launch.processes({"compute": {}}) == 1
    assert launch.processes({"compute": {"train_processes": 3}}) == 3
    command = launch.torchrun_command(3, ["train", "--day", DAY])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in command and command[-4:] == ["pipeline", "train", "--day", DAY]
