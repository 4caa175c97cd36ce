"""The training window: the ranker trains on the day and the earlier days that passed validation (a
rejected day is left out and listed), each day's importance is scored once and reused, every evaluated
row is later than every trained row, and a new estimator rescores the window's days through DVC and
nothing else."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import DAY, make_workspace, repro, run, simulate, tiny_params

from pipeline.data import window
from pipeline.data.contract import DayPaths, impression_parts
from pipeline.model import dataset
from pipeline.model.features import holdout_mask
from pipeline.runplan import EXIT_DATA_REJECTED
from pipeline.stages.train import recency_weights, split_training_slice, window_decay, window_weights

REJECTED, THIRD = "2026-11-02", "2026-11-03"


def write_day(raw, day: str) -> None:
    (raw / "impressions" / f"dt={day}").mkdir(parents=True)
    (raw / "impressions" / f"dt={day}" / "part-0.parquet").write_bytes(day.encode())
    (raw / "catalog" / f"dt={day}").mkdir(parents=True)
    (raw / "catalog" / f"dt={day}" / "catalog.parquet").write_bytes(b"catalog " + day.encode())


def passed(validate_root, day: str, success: bool = True) -> None:
    (validate_root / f"dt={day}").mkdir(parents=True)
    (validate_root / f"dt={day}" / "summary.json").write_text(json.dumps({"success": success}))


def test_the_window_keeps_validated_days_and_lists_every_gap(tmp_path):
    raw, checked = tmp_path / "raw", tmp_path / "validate"
    for day in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-05", "2026-11-06"):
        write_day(raw, day)
    passed(checked, "2026-11-01")
    passed(checked, "2026-11-02", success=False)
    passed(checked, "2026-11-05")  # 2026-11-03 never validated, 2026-11-04 never landed
    manifest = window.manifest(raw, checked, "2026-11-06", 7)
    assert manifest["days"] == ["2026-11-01", "2026-11-05", "2026-11-06"]
    # Days before the log's first day are no gap; the others are listed with their reason.
    assert manifest["left_out"] == [{"day": "2026-11-02", "reason": window.REJECTED},
                                    {"day": "2026-11-03", "reason": window.NOT_VALIDATED},
                                    {"day": "2026-11-04", "reason": window.NO_DATA}]
    assert window.manifest(raw, checked, "2026-11-06", 2)["days"] == ["2026-11-05", "2026-11-06"]
    assert window.manifest(raw, checked, "2026-11-06", 1) == {
        "day": "2026-11-06", "window_days": 1, "days": ["2026-11-06"], "earlier": [], "left_out": []}
    # An earlier day rewritten changes the manifest (and so reruns what reads the window).
    before = window.manifest(raw, checked, "2026-11-06", 7)["earlier"]
    (raw / "catalog" / "dt=2026-11-05" / "catalog.parquet").write_bytes(b"rewritten")
    after = window.manifest(raw, checked, "2026-11-06", 7)["earlier"]
    assert [e["day"] for e in after] == [e["day"] for e in before] and after[1] != before[1] and after[0] == before[0]


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "7"])
def test_a_nonsense_window_is_refused_by_name(value):
    with pytest.raises(ValueError, match="train.window_days"):
        window.window_days({"train": {"window_days": value}})


@pytest.mark.parametrize("value", [0, -0.5, 1.5, True, "0.5"])
def test_a_nonsense_window_decay_is_refused_by_name(value):
    with pytest.raises(ValueError, match="train.window_decay"):
        window_decay({"train": {"window_decay": value}})


def test_older_days_weigh_less_by_their_calendar_distance_from_the_run_day(tmp_path):
    days = ["2026-11-01", "2026-11-03", "2026-11-04"]  # 11-02 left out: 11-01 is still two days older than 11-03
    recency = recency_weights(days, "2026-11-04", 0.5)
    assert recency == {"2026-11-01": 0.125, "2026-11-03": 0.5, "2026-11-04": 1.0}
    rng = np.random.default_rng(3)
    frames, files = [], []
    for day in days:
        ids = [f"{day}-{i}" for i in range(6)]
        files.append(tmp_path / f"{day}.parquet")
        pq.write_table(pa.table({"event_id": ids[::-1], "weight": rng.uniform(0.5, 2, 6)}), files[-1])
        frames.append(pd.DataFrame({"event_id": ids, "day": day}))
    impressions = pd.concat(frames, ignore_index=True).astype({"day": "category"})
    rows = rng.permutation(len(impressions))[:12]
    got = window_weights(impressions, rows, days, files, recency)
    # Brute force: a pandas merge of every day's scores, times the day's factor.
    scores = pd.concat([pq.read_table(f).to_pandas() for f in files]).set_index("event_id")["weight"]
    picked = impressions.iloc[rows]
    expected = scores.loc[picked["event_id"]].to_numpy() * picked["day"].astype(str).map(recency).to_numpy()
    assert np.allclose(got, expected)
    assert np.allclose(window_weights(impressions, rows, days, files), scores.loc[picked["event_id"]].to_numpy())


def test_requests_sharing_the_cut_time_are_held_out_together():
    ts = pd.to_datetime(["2026-11-01 10:00", "2026-11-01 11:00", "2026-11-01 12:00", "2026-11-01 12:00",
                         "2026-11-01 13:00"], utc=True)
    frame = pd.DataFrame({"request_id": ["a", "b", "c", "d", "e"], "ts": ts})
    # Two of five requests held out by count; c starts with d, so it goes with d and e.
    held = holdout_mask(frame, 0.4)
    assert held.tolist() == [False, False, True, True, True]
    assert frame["ts"][held].min() > frame["ts"][~held].max()


def test_the_held_back_slices_are_the_newest_days_last_requests_and_older_days_are_fitted_whole():
    # Two older days of 30 requests and the newest of 20, two rows each, in time order.
    starts = pd.date_range("2026-11-01", periods=80, freq="30min", tz="UTC")
    frame = pd.DataFrame({"request_id": np.repeat([f"r{i}" for i in range(80)], 2), "ts": np.repeat(starts, 2),
                          "day": np.repeat(["2026-11-01"] * 30 + ["2026-11-02"] * 30 + ["2026-11-03"] * 20, 2)})
    cfg = {"calibration_fraction": 0.1, "validation_fraction": 0.1}
    newest = (frame["day"] == "2026-11-03").to_numpy()
    fit, validation, calibration = split_training_slice(frame, cfg, newest)
    requests = frame["request_id"].str[1:].astype(int)
    # Brute force: of the newest day's 20 requests the last 2 calibrate, the 2 before them (10 % of the
    # 18 left) validate; every row of the older days is fitted.
    assert sorted(set(requests[calibration])) == [78, 79] and sorted(set(requests[validation])) == [76, 77]
    assert fit.sum() == len(frame) - 8 and fit[~newest].all()
    assert frame["ts"][fit].max() < frame["ts"][validation].min() <= frame["ts"][validation].max() < frame["ts"][
        calibration].min()
    # Without `newest` the slices are the whole frame's last requests: one day's training slice as before.
    fit, validation, calibration = split_training_slice(frame, cfg)
    assert sorted(set(requests[calibration])) == list(range(72, 80))
    assert sorted(set(requests[validation])) == list(range(65, 72)) and not fit[frame.index >= 130].any()


def test_a_window_of_one_day_is_that_day_as_load_day_builds_it(completed_run):
    params = yaml.safe_load((completed_run / "params.yaml").read_text())
    args = (completed_run / "data/raw", DAY, completed_run / "work/pretrain/embeddings", params)
    one, alone = dataset.load_window(args[0], [DAY], *args[2:]), dataset.load_day(*args)
    assert np.array_equal(one.holdout, alone.holdout) and len(one.parts) == 1
    for column in ("dense", "position", "click", "ids"):
        assert np.array_equal(getattr(one.parts[0], column).numpy(), getattr(alone.x, column).numpy()), column
    assert np.array_equal(one.parts[0].text_indices[0].numpy(), alone.x.text_indices[0].numpy())


def read_day(workspace, day: str) -> pd.DataFrame:
    parts = impression_parts(DayPaths(workspace / "data/raw", day))
    return pd.concat([pq.read_table(p, columns=["request_id", "ts"]).to_pandas() for p in parts], ignore_index=True)


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """Three tiny days run one after the other; the second breaks the data contract."""
    params = tiny_params()
    params["train"]["window_days"] = 3
    workspace = make_workspace(tmp_path_factory.mktemp("window") / "ws", params)
    simulate(workspace, DAY, days=3)
    part = impression_parts(DayPaths(workspace / "data/raw", REJECTED))[0]
    table = pq.read_table(part)
    frame = table.to_pandas()
    frame.loc[:4, "position"] = -1
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), part)
    first = repro(workspace, DAY)
    scored_first = (workspace / f"work/importance/dt={DAY}/scores.parquet").read_bytes()
    rejected = repro(workspace, REJECTED, check=False)
    assert rejected.returncode == EXIT_DATA_REJECTED, rejected.stderr
    third = repro(workspace, THIRD)
    return {"workspace": workspace, "first": first, "third": third, "scored_first": scored_first}


def test_a_rejected_day_is_left_out_of_the_window_and_listed(windowed):
    workspace = windowed["workspace"]
    metrics = json.loads((workspace / "work/train/metrics.json").read_text())
    assert metrics["window"]["days"] == [DAY, THIRD]
    assert metrics["window"]["left_out"] == [{"day": REJECTED, "reason": window.REJECTED}]
    assert f"left out {REJECTED} (rejected by validate)" in windowed["third"].stderr
    # Every row of the first day was trained on (the fit, validation and calibration slices together).
    assert metrics["window"]["rows_by_day"][DAY] == len(read_day(workspace, DAY))
    assert metrics["train_rows"] + metrics["validation_rows"] + metrics["calibration_rows"] == sum(
        metrics["window"]["rows_by_day"].values())
    # The older day is fitted whole; the held-back slices come out of the newest day, which is fitted too.
    fitted = metrics["window"]["fit_rows_by_day"]
    assert fitted[DAY] == metrics["window"]["rows_by_day"][DAY] and 0 < fitted[THIRD] < len(read_day(workspace, THIRD))
    assert metrics["window"]["rows_by_day"][THIRD] - fitted[THIRD] == metrics["validation_rows"] + metrics[
        "calibration_rows"]


def test_every_evaluated_row_is_later_than_every_trained_row(windowed):
    workspace = windowed["workspace"]
    trained = json.loads((workspace / "work/train/metrics.json").read_text())["window"]
    evaluated = json.loads((workspace / "work/evaluate/metrics.json").read_text())
    cut = pd.Timestamp(trained["evaluated_from"])
    assert pd.Timestamp(trained["trained_until"]) < cut
    # From the raw log: the third day's rows before the cut are the trained ones, the rest were evaluated.
    third = read_day(workspace, THIRD)
    ts = pd.to_datetime(third["ts"], utc=True)
    assert trained["rows_by_day"][THIRD] == int((ts < cut).sum())
    assert evaluated["rows"] == int((ts >= cut).sum()) > 0
    assert ts[ts >= cut].min() == cut


def test_each_day_is_scored_once_and_reused(windowed):
    workspace, third = windowed["workspace"], windowed["third"]
    assert f"Running stage 'importance@{DAY}'" in windowed["first"].stdout
    assert f"Running stage 'importance@{THIRD}'" in third.stdout
    assert f"Running stage 'importance@{DAY}'" not in third.stdout, third.stdout
    assert f"Running stage 'importance_shard@{DAY}-0'" not in third.stdout
    assert (workspace / f"work/importance/dt={DAY}/scores.parquet").read_bytes() == windowed["scored_first"]
    # The rejected day was never scored, and its folder is not among the window's.
    assert sorted(p.name for p in (workspace / "work/importance").iterdir() if p.is_dir()) == [
        f"dt={DAY}", f"dt={THIRD}"]


def train_third(workspace, out, warm: bool = True, **changes) -> dict:
    """The train command on the third day with the workspace's params changed (warm start on by default)."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"].update(warm_start=warm)
    for section, knobs in changes.items():
        params[section].update(knobs)
    (out / "params.yaml").parent.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "pipeline", "train", "--data", "data/raw", "--day", THIRD,
         "--window", "run/train_window.json", "--embeddings", "work/pretrain/embeddings",
         "--encoder", "work/pretrain/encoder", "--weights", "work/importance", "--baseline", "run/baseline.json",
         "--params", str(out / "params.yaml"), "--out", str(out / "train")], workspace)
    return json.loads((out / "train/metrics.json").read_text())


def test_a_warm_start_begins_at_the_champion_and_fits_the_newer_days(windowed, tmp_path):
    from pipeline.model import ranker
    from pipeline.release import champions

    workspace = windowed["workspace"]
    champion = json.loads((workspace / "run/baseline.json").read_text())["champion"]
    assert champion["day"] == DAY  # the rejected day promoted nothing
    # A learning rate of 0: whatever the fit does, the weights stay where they started.
    metrics = train_third(workspace, tmp_path / "warm", train={"learning_rate": 0.0, "weight_decay": 0.0})
    assert metrics["warm_start"]["from"] == champion["model_id"]
    assert metrics["window"]["days"] == [DAY, THIRD] and metrics["window"]["fitted_days"] == [THIRD]
    assert list(metrics["window"]["rows_by_day"]) == [THIRD]
    started = ranker.load(champions.model_dir(workspace / "registry", champion) / "ranker").state_dict()
    fitted = ranker.load(tmp_path / "warm/train/model").state_dict()
    assert set(fitted) == set(started)
    for name, tensor in started.items():
        if name != "click_calibration":  # recalibrated on the day's calibration rows
            assert torch.equal(fitted[name], tensor), name
    # Another architecture cannot start from it: the whole window from scratch, and the reason.
    cold = train_third(workspace, tmp_path / "cold", ranker={"hidden": 16})
    assert cold["warm_start"]["from"] is None and "differs in hidden" in cold["warm_start"]["note"]
    assert cold["window"]["fitted_days"] == [DAY, THIRD]


def test_a_new_estimator_rescores_the_window_through_dvc_and_nothing_else(windowed):
    workspace = windowed["workspace"]
    lock_before = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["importance"]["estimator"] = "position_ipw"
    params["importance"]["use_selection"] = False
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = repro(workspace, THIRD, "importance_shard", "importance")
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {f"importance_shard@{DAY}-0", f"importance_shard@{THIRD}-0", f"importance@{DAY}",
                   f"importance@{THIRD}"}, result.stdout
    for day in (DAY, THIRD):
        metrics = json.loads((workspace / f"work/importance/dt={day}/metrics.json").read_text())
        assert metrics["estimator"] == "position_ipw"
    lock_after = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    for stage in ("validate", "corpus", "pretrain"):
        assert lock_after[stage] == lock_before[stage], stage
    # What is left to run is the training on the new weights (and, once it has run, what follows it).
    status = run([sys.executable, "-m", "dvc", "status", "--json"], workspace)
    assert set(json.loads(status.stdout)) == {"train"}, status.stdout


def test_a_window_decay_weighs_the_older_days_less_in_training(windowed, tmp_path):
    workspace = windowed["workspace"]
    flat = train_third(workspace, tmp_path / "flat", warm=False, train={"window_decay": 1.0})
    decayed = train_third(workspace, tmp_path / "decayed", warm=False, train={"window_decay": 0.25})
    # The rejected day between them still counts as a day of distance.
    assert flat["window"]["recency_weight_by_day"] == {DAY: 1.0, THIRD: 1.0}
    assert decayed["window"]["recency_weight_by_day"] == {DAY: 0.0625, THIRD: 1.0}
    # The same rows, weighted otherwise: another fit (the validation rows are the newest day's, unchanged).
    assert decayed["train_rows"] == flat["train_rows"] and decayed["validation_rows"] == flat["validation_rows"]
    assert decayed["final_weighted_loss"] != flat["final_weighted_loss"]
