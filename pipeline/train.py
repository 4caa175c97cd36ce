"""train stage: fit the ranker on the day's training slice with the importance weights."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.params import load_params, stage_seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--embeddings", required=True, help="embeddings folder written by pretrain")
    parser.add_argument("--weights", required=True, help="scores.parquet written by importance")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: model/, metrics.json, loss.csv")


def aligned_weights(event_ids: pd.Series, weights_file: str | Path):
    table = pd.read_parquet(weights_file, columns=["event_id", "weight"])
    weights = event_ids.to_frame().merge(table, on="event_id", how="left", validate="one_to_one")["weight"]
    if weights.isna().any():
        raise ValueError(f"{weights_file}: no weight for {int(weights.isna().sum())} training events, "
                         f"e.g. {event_ids[weights.isna().to_numpy()].iloc[0]}")
    return weights.to_numpy()


def _round(value):
    return None if value is None else round(value, 6)


def run(data_dir, day: str, embeddings_dir, weights_file, out_dir, params: dict) -> dict:
    from pipeline import ranker
    from pipeline.compute import setup
    from pipeline.dataset import load_day
    from pipeline.features import holdout_mask
    from pipeline.metrics import ece

    cfg = params["train"]
    seed = stage_seed(params, "train")
    device = setup(params, seed)
    data = load_day(data_dir, day, embeddings_dir, params)
    # The training slice's last requests calibrate; the rest trains, weighted.
    in_train = data.impressions.iloc[data.train_index].reset_index(drop=True)
    calibration_mask = holdout_mask(in_train, cfg["calibration_fraction"])
    rows, calibration_rows = data.train_index[~calibration_mask], data.train_index[calibration_mask]
    weights = aligned_weights(data.impressions["event_id"].iloc[rows].reset_index(drop=True), weights_file)
    train_x = data.x.subset(rows)
    model = ranker.new_model(data.x.text_dim, params["ranker"], seed, train_x)
    started = time.perf_counter()
    with tqdm(total=len(rows) * cfg["epochs"], desc="train", unit="row", unit_scale=True) as bar:
        history = ranker.fit(model, train_x, weights, cfg, seed, device, cfg["epochs"], progress=bar)
    calibration_x = data.x.subset(calibration_rows)
    ece_before = ece(calibration_x.click.numpy(), ranker.predict(model, calibration_x, device, True)["p_click"],
                     params["evaluate"]["calibration_bins"])
    a, b = ranker.calibrate(model, calibration_x, device)
    ece_after = ece(calibration_x.click.numpy(), ranker.predict(model, calibration_x, device, True)["p_click"],
                    params["evaluate"]["calibration_bins"])
    seconds = time.perf_counter() - started
    metrics = {"device": device, "epochs": len(history), "train_rows": int(len(rows)),
               "calibration_rows": int(len(calibration_rows)), "final_weighted_loss": round(history[-1], 6),
               "calibration": {"scale": round(a, 6), "shift": round(b, 6),
                               "ece_before": _round(ece_before), "ece_after": _round(ece_after)}}
    with atomic_dir(out_dir) as tmp:
        ranker.save(model, tmp / "model")
        pd.DataFrame({"epoch": range(1, len(history) + 1), "weighted_loss": history}).to_csv(
            tmp / "loss.csv", index=False, float_format="%.6f")
        write_json_atomic(tmp / "metrics.json", metrics)
    print(f"train: {day} {len(rows)} rows x {len(history)} epochs on {device} in {seconds:.1f}s, "
          f"weighted loss {history[0]:.4f} -> {history[-1]:.4f}; calibrated on {len(calibration_rows)} rows, "
          f"ECE {metrics['calibration']['ece_before']} -> {metrics['calibration']['ece_after']}")
    return metrics


def main(args: argparse.Namespace) -> int:
    run(args.data, args.day, args.embeddings, args.weights, args.out, load_params(args.params))
    return 0
