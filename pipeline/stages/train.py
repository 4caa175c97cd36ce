"""train stage: fit the ranker on the training window with each day's importance weights.

The window (run/train_window.json, pipeline/data/window.py) is the day and the earlier days that passed
validation; the fitted rows are every row of the earlier days and the day's rows before its held-out
last requests, which evaluate scores: every evaluated row is later than every fitted row. The day's
last training requests are held back in two parts (the older window days are fitted whole): the very
last calibrate the click probabilities after weighted training, the ones before them stop training
early. With --checkpoints a run leaves resumable checkpoints there, and a killed run started again
resumes from the newest one whose inputs match, ending with the same weights and step curve. With
compute.train_processes N > 1 the command relaunches itself under torchrun (pipeline/model/launch.py): N
ranks train with DistributedDataParallel and rank 0 alone writes the outputs (the curves too), once every
rank has finished training.

Curves for `dvc plots`: loss.csv (per epoch: weighted training and validation loss) and
live/plots/metrics/{loss,learning_rate}.tsv (per optimizer step).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.model import launch
from pipeline.params import load_params, stage_seed
from pipeline.reports import live


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--embeddings", required=True, help="embeddings folder written by pretrain")
    parser.add_argument("--weights", required=True,
                        help="the importance folder (dt=DAY/scores.parquet for each window day), or one "
                             "scores.parquet for a window of the day alone")
    parser.add_argument("--baseline", default=None,
                        help="run/baseline.json: the champion a warm start (train.warm_start) starts from")
    parser.add_argument("--window", default=None,
                        help="run/train_window.json: the days trained on (default: the day alone)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True,
                        help="output folder: model/, metrics.json, loss.csv, live/ (step curves)")
    parser.add_argument("--encoder", default=None,
                        help="encoder folder written by pretrain; needed when ranker.encoder.tune_top_layers > 0")
    parser.add_argument("--checkpoints", default=None,
                        help="folder for resumable checkpoints (kept until the run succeeds; default: none)")


def weight_files(weights: str | Path, days: list[str]) -> list[Path]:
    """Each window day's scores.parquet under the importance folder (or the one file given)."""
    weights = Path(weights)
    if weights.is_file():
        if len(days) > 1:
            raise ValueError(f"{weights}: one scores file for a window of {len(days)} days; give the importance "
                             "folder (dt=DAY/scores.parquet for each day)")
        return [weights]
    files = [weights / f"dt={day}" / "scores.parquet" for day in days]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"no importance scores for window day(s): {', '.join(missing)}")
    return files


def aligned_weights(event_ids: pd.Series, scores: Path):
    """Each event's weight from a day's scores file, joined on event_id in Arrow: a pandas merge of
    millions of string keys would hold a Python object per key."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(scores, columns=["event_id", "weight"])
    keys = table.column("event_id").combine_chunks()
    if len(pc.unique(keys)) != len(keys):
        raise ValueError(f"{scores}: an event_id has more than one weight")
    index = pc.index_in(pa.array(event_ids, type=keys.type), value_set=keys)
    missing = index.is_null().to_numpy(zero_copy_only=False)
    if missing.any():
        raise ValueError(f"{scores}: no weight for {int(missing.sum())} training "
                         f"events, e.g. {event_ids[missing].iloc[0]}")
    return table.column("weight").to_numpy()[index.to_numpy()]


def window_decay(params: dict) -> float:
    """train.window_decay: how much a day weighs against the day after it (1: every window day alike)."""
    value = params["train"].get("window_decay", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"train.window_decay must be a number in (0, 1], got {value!r}")
    return float(value)


def recency_weights(days: list[str], day: str, factor: float) -> dict[str, float]:
    """Each window day's weight multiplier: factor ** (calendar days before `day`), so a gap in the window
    does not make an older day count as a newer one."""
    last = date.fromisoformat(day)
    return {d: factor ** (last - date.fromisoformat(d)).days for d in days}


def window_weights(impressions: pd.DataFrame, rows: np.ndarray, days: list[str], files: list[Path],
                   recency: dict[str, float] | None = None) -> np.ndarray:
    """The weight of each of `rows` (positions in the window's impressions, whose `day` column names the
    day of each), joined day by day, each day's rows with its own scores file: the join's hash table
    then holds one day's event ids, not the window's (a 2 x 10 M window peaked on it). `recency` scales
    each day's importance weights (train.window_decay)."""
    recency = recency or {}
    out = np.empty(len(rows), dtype=np.float64)
    day_of_row = impressions["day"].cat.codes.to_numpy()[rows]
    code_of = {day: code for code, day in enumerate(impressions["day"].cat.categories)}
    joined = 0
    for day, scores in zip(days, files):
        at = np.flatnonzero(day_of_row == code_of.get(day, -1))
        if at.size:
            out[at] = aligned_weights(impressions["event_id"].iloc[rows[at]].reset_index(drop=True), scores)
            out[at] *= recency.get(day, 1.0)
            joined += at.size
    if joined != len(rows):
        raise ValueError(f"{len(rows) - joined} training rows are of no window day with a scores file "
                         f"({', '.join(days)})")
    return out


def _round(value):
    return None if value is None else round(value, 6)


def fingerprint(day: str, params: dict, x, weights, world_size: int = 1) -> str:
    """What a checkpoint must match to be resumed: the knobs, the day, the training rows themselves and
    the number of ranks (a step's batch and a checkpoint's place in the epoch depend on it)."""
    parts = [day, params["seed"], params["ranker"], params["train"], x.numeric_names, x.categorical_names]
    if world_size > 1:  # one rank keeps the fingerprint it always had: its checkpoints stay resumable
        parts.append({"world_size": world_size})
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for tensor in (x.dense, x.ids, x.numeric, x.categorical, x.position, x.click, x.purchase, *x.text_indices):
        digest.update(np.ascontiguousarray(tensor.numpy()))  # the buffer itself: no copy of a large tensor
    digest.update(weights.astype("float32").tobytes())
    return digest.hexdigest()


def split_training_slice(in_train, cfg: dict, newest: np.ndarray | None = None):
    """Masks over the training slice: (fit, validation, calibration). Both held-back slices are cut from
    the rows of the newest day (`newest`, default every row) by time, calibration last: fractions of a
    whole window would hold back all of the newest day, the one that weighs most, and fit older days only."""
    from pipeline.model.features import holdout_mask

    at = np.arange(len(in_train)) if newest is None else np.flatnonzero(newest)
    part = in_train.iloc[at]
    calibration = np.zeros(len(in_train), dtype=bool)
    validation = np.zeros(len(in_train), dtype=bool)
    held = holdout_mask(part, cfg["calibration_fraction"])
    calibration[at[held]] = True
    if cfg.get("validation_fraction", 0):
        rest = np.flatnonzero(~held)
        validation[at[rest[holdout_mask(part.iloc[rest], cfg["validation_fraction"])]]] = True
    return ~(calibration | validation), validation, calibration


def fitted_rows(data) -> tuple[np.ndarray, int]:
    """The rows trained on: those outside the held-out slice that are strictly earlier than its first
    row (a request reaching into the slice loses its later rows), and how many were dropped so."""
    ts = pd.to_datetime(data.impressions["ts"], utc=True).to_numpy()
    rows = data.train_index
    if not data.holdout.any():
        return rows, 0
    earlier = ts[rows] < ts[data.holdout].min()
    return rows[earlier], int((~earlier).sum())


def iso(value) -> str:
    return pd.Timestamp(value).tz_convert("UTC").isoformat()


def warm_start_plan(cfg: dict, days: list[str], champion: dict | None) -> tuple[list[str], dict | None, str]:
    """(days to fit, champion to start from or None, what was decided): with train.warm_start the
    candidate starts from the champion's weights and fits the window's days newer than the champion's."""
    if not cfg.get("warm_start"):
        return days, None, "off: trained from scratch on the window"
    if champion is None:
        return days, None, "no champion yet: trained from scratch on the window"
    newer = [d for d in days if d > champion["day"]]
    if not newer:
        return days, None, (f"the champion {champion['model_id']} was trained on {champion['day']}, not before "
                            f"the window's last day: trained from scratch on the window")
    return newer, champion, f"started from {champion['model_id']}, fitted on {', '.join(newer)}"


def adopt(model, champion_ranker: Path) -> str | None:
    """The champion's weights into `model` (its calibration left at the identity: train recalibrates);
    None when adopted, else why not."""
    from dataclasses import asdict

    from pipeline.model import ranker

    try:
        prior = ranker.load(champion_ranker)
    except (OSError, ValueError, TypeError) as exc:
        return f"the champion's ranker cannot be read ({exc})"
    if asdict(prior.config) != asdict(model.config):
        differ = sorted(k for k, v in asdict(model.config).items() if asdict(prior.config).get(k) != v)
        return f"the champion's ranker differs in {', '.join(differ)}"
    state = prior.state_dict()
    state["click_calibration"] = model.state_dict()["click_calibration"]
    model.load_state_dict(state)
    return None


def run(data_dir, day: str, embeddings_dir, weights_source, out_dir, params: dict, checkpoints=None,
        encoder_dir=None, window: dict | None = None, champion: dict | None = None,
        warm_note: str | None = None) -> dict:
    from pipeline.compute import setup
    from pipeline.data.window import describe, earlier_days
    from pipeline.model import distributed, embeddings, features, ranker, text_tower, training
    from pipeline.model.checkpoints import Checkpoints
    from pipeline.model.dataset import load_window
    from pipeline.model.metrics import ece

    cfg = params["train"]
    averaging = training.average_epochs(cfg)  # a nonsense knob fails before the window is read
    seed = stage_seed(params, "train")
    if launch.launched():
        launch.exit_on_sigterm()
    device = setup(params, seed)
    window = window or {"day": day, "window_days": 1, "days": [day], "left_out": []}
    window_days = [*earlier_days(window, day), day]
    days, start_from, warm_start = warm_start_plan(cfg, window_days, champion)
    warm_start = warm_note or warm_start
    data = load_window(data_dir, days, embeddings_dir, params)
    trained, straddling = fitted_rows(data)
    in_train = data.impressions.iloc[trained].reset_index(drop=True)
    fit_mask, validation_mask, calibration_mask = split_training_slice(in_train, cfg,
                                                                       (in_train["day"] == day).to_numpy())
    rows = trained[fit_mask]
    validation_rows, calibration_rows = trained[validation_mask], trained[calibration_mask]
    # Older days count less: the newest traffic is what the model will serve next.
    recency = recency_weights(days, day, window_decay(params))
    all_weights = window_weights(data.impressions, trained, days, weight_files(weights_source, days), recency)
    weights = all_weights[fit_mask]
    tower = None
    layers = text_tower.tuned_layers(params)
    if layers:
        if cfg.get("loader_workers", 0):
            raise ValueError("ranker.encoder.tune_top_layers needs train.loader_workers 0 (the tuned layers "
                             "read the rows' text indices, which worker batches replace by vectors)")
        if encoder_dir is None:
            raise ValueError("ranker.encoder.tune_top_layers > 0: pass --encoder (the pretrain stage's encoder)")
        # Each unique text through the frozen bottom layers once; the rows share the cache.
        encoder, states = text_tower.states_for(encoder_dir, embeddings.load(embeddings_dir).texts,
                                                layers, params, device)
        tower = text_tower.TextTower.from_encoder(encoder, layers)
        for part in data.parts:  # the slices cut from the parts carry them
            part.states = states
    text_dim = data.parts[0].text_dim
    # The three slices straight from the days' parts, which this empties: no concatenated window beside them.
    train_x, validation_x, calibration_x = features.take(data.parts, [rows, validation_rows, calibration_rows])
    validation = (validation_x, all_weights[validation_mask]) if len(validation_rows) else None
    model = ranker.new_model(text_dim, params["ranker"], seed, train_x, tower=tower, weights=weights)
    if start_from is not None:
        from pipeline.release.champions import model_dir

        refused = adopt(model, model_dir(params["registry"]["dir"], start_from) / "ranker")
        if refused:  # the whole window from scratch instead, saying why
            del train_x, validation, validation_x, calibration_x, data  # the cold run loads its own
            cold = {**params, "train": {**cfg, "warm_start": False}}
            return run(data_dir, day, embeddings_dir, weights_source, out_dir, cold, checkpoints, encoder_dir,
                       window, None, f"not started from {start_from['model_id']}: {refused}; "
                       "trained from scratch on the window")
    leader = int(os.environ.get("RANK", 0)) == 0
    world = int(os.environ.get("WORLD_SIZE", 1))
    step_log = training.StepLog()
    started = time.perf_counter()
    with tqdm(total=len(rows) * cfg["epochs"], desc="train", unit="row", unit_scale=True, disable=not leader) as bar:
        result = training.fit(model, train_x, weights, cfg, seed, device, cfg["epochs"],
                              loss_fn=ranker.per_sample_loss, validation=validation, checkpoint_dir=checkpoints,
                              fingerprint=fingerprint(day, params, train_x, weights, world), progress=bar,
                              step_log=step_log, average_epochs=averaging)
    # Waits for every rank: a rank that failed in training stops the command before anything is written.
    distributed.stop_distributed()
    if not leader:
        return {}
    history = result.history
    ece_before = ece(calibration_x.click.numpy(), ranker.predict(model, calibration_x, device, True)["p_click"],
                     params["evaluate"]["calibration_bins"])
    a, b = ranker.calibrate(model, calibration_x, device)
    ece_after = ece(calibration_x.click.numpy(), ranker.predict(model, calibration_x, device, True)["p_click"],
                    params["evaluate"]["calibration_bins"])
    seconds = time.perf_counter() - started
    ts = pd.to_datetime(data.impressions["ts"], utc=True)
    per_day = data.impressions["day"].iloc[trained].value_counts()
    fit_per_day = data.impressions["day"].iloc[rows].value_counts()
    metrics = {"window": {"days": window_days, "fitted_days": days, "left_out": window.get("left_out", []),
                          "rows_by_day": {d: int(per_day.get(d, 0)) for d in days},
                          "fit_rows_by_day": {d: int(fit_per_day.get(d, 0)) for d in days},
                          "recency_weight_by_day": {d: round(recency[d], 6) for d in days},
                          "trained_until": iso(ts.iloc[trained].max()),
                          "evaluated_from": iso(ts[data.holdout].min()) if data.holdout.any() else None,
                          "rows_dropped_at_the_evaluation_cut": straddling},
               "warm_start": {"from": None if start_from is None else start_from["model_id"], "note": warm_start},
               "device": device, "world_size": world, "epochs": len(history), "steps": result.steps,
               "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
               "resumed_from_step": result.resumed_from_step, "train_rows": int(len(rows)),
               "validation_rows": int(len(validation_rows)), "calibration_rows": int(len(calibration_rows)),
               "final_weighted_loss": round(history[-1], 6),
               "validation_loss": [round(v, 6) for v in result.validation_history],
               "calibration": {"scale": round(a, 6), "shift": round(b, 6),
                               "ece_before": _round(ece_before), "ece_after": _round(ece_after)}}
    # validation_loss stays a column (empty) without a validation slice: dvc.yaml's plot of loss.csv draws it.
    losses = pd.DataFrame({"epoch": range(1, len(history) + 1), "weighted_loss": history,
                           "validation_loss": result.validation_history or np.nan})
    with atomic_dir(out_dir) as tmp:
        ranker.save(model, tmp / "model")
        losses.to_csv(tmp / "loss.csv", index=False, float_format="%.6f")
        write_step_curves(tmp / live.LIVE_DIR, step_log)
        write_json_atomic(tmp / "metrics.json", metrics)
    if checkpoints:
        Checkpoints(checkpoints, "").clear()  # the run is done: nothing left to resume
    print(f"train: {describe(window)}; warm start: {warm_start}")
    print(f"train: {day} {len(rows)} rows x {len(history)} epochs ({result.steps} steps) on {device} in "
          f"{seconds:.1f}s, weighted loss {history[0]:.4f} -> {history[-1]:.4f}"
          + (f", best validation epoch {result.best_epoch}" if result.best_epoch else "")
          + (" (stopped early)" if result.stopped_early else "")
          + f"; calibrated on {len(calibration_rows)} rows, "
          f"ECE {metrics['calibration']['ece_before']} -> {metrics['calibration']['ece_after']}")
    return metrics


def write_step_curves(live_dir: Path, step_log) -> None:
    """live/plots/metrics/loss.tsv and learning_rate.tsv: one row per optimizer step."""
    live.write_step_metrics(live_dir, {
        "loss": list(zip(step_log.steps, step_log.loss)),
        "learning_rate": list(zip(step_log.steps, step_log.learning_rate))})


def command_line(args: argparse.Namespace) -> list[str]:
    """This command's arguments again, for the ranks torchrun starts."""
    argv = ["train", "--data", args.data, "--day", args.day, "--embeddings", args.embeddings,
            "--weights", args.weights, "--params", args.params, "--out", args.out]
    for flag, value in (("--encoder", args.encoder), ("--checkpoints", args.checkpoints), ("--window", args.window),
                        ("--baseline", args.baseline)):
        if value is not None:
            argv += [flag, value]
    return argv


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    processes = launch.processes(params)
    if processes > 1 and not launch.launched():
        launch.exec_torchrun(processes, command_line(args))  # does not return
    from pipeline.atomic import read_json
    from pipeline.data.window import read

    window = read(args.window) if args.window else None
    champion = read_json(args.baseline)["champion"] if args.baseline else None
    run(args.data, args.day, args.embeddings, args.weights, args.out, params, args.checkpoints, args.encoder, window,
        champion)
    return 0
