"""Training throughput of the ranker in impressions per second, and the time of one epoch over 10
million impressions it implies.

    python benchmarks/train_throughput.py [--rows 50000] [--epochs 2] [--configs fp32,workers2,accum4]
        [--out benchmarks/results/train_throughput.json]

Simulates one day with the project's params, builds its features with the base encoder's embeddings
(as the train stage sees them), then times pipeline/model/training.py's loop for each configuration after
one warm-up epoch. Configurations: fp32 (params as they are), workers2 (two DataLoader workers),
accum4 (4 micro-batches per step), bf16 (autocast; on CUDA the default), tower1 (the base encoder's top
layer tuned inside the ranker over cached bottom-layer states). On a machine with CUDA it
times the same configurations there too (compute.device auto picks it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from estimator_cost import simulated_day  # noqa: E402

from pipeline.model import ranker, training  # noqa: E402
from pipeline.compute import setup  # noqa: E402

CONFIGS = {
    "fp32": {"precision": "fp32"},
    "workers2": {"precision": "fp32", "loader_workers": 2},
    "accum4": {"precision": "fp32", "accumulation_steps": 4},
    "bf16": {"precision": "bf16"},
    # the base encoder's top layer tuned inside the ranker (ranker.encoder.tune_top_layers 1)
    "tower1": {"precision": "fp32", "tune_top_layers": 1},
}
TEN_MILLION = 10_000_000


def tuned_tower(data, params: dict, layers: int, device: str):
    """(tower, TextStates) from the base encoder, over the texts load_log embedded (same order)."""
    from pipeline.model import encoder as enc
    from pipeline.model import text_tower

    texts = sorted(set(data.catalog["title"].dropna()) | set(data.impressions["query"].dropna()))
    tokenizer, model = enc.load_base(params["pretrain"]["base_model"], params["pretrain"].get("tiny_bert", {}), 7)
    cfg = params["ranker"]["encoder"]
    states = text_tower.bottom_states(model.base_model, tokenizer, texts, layers, int(cfg["max_length"]),
                                      int(cfg["batch_size"]), device)
    return text_tower.TextTower.from_encoder(model.base_model, layers), states


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--configs", default="fp32,workers2,accum4,bf16")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    data, _ = simulated_day(args.rows, args.params, params)
    device = setup(params, 7)
    x = data.x.subset(data.train_index)
    runs = {}
    for name in args.configs.split(","):
        knobs = dict(CONFIGS[name])
        layers = knobs.pop("tune_top_layers", 0)
        cfg = {**params["train"], **knobs, "max_steps": None}
        tower = None
        if layers:
            tower, x.states = tuned_tower(data, params, layers, device)
        model = ranker.new_model(x.text_dim, params["ranker"], 7, x, tower=tower)
        training.fit(model, x, None, cfg, 7, device, 1, loss_fn=ranker.per_sample_loss)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        training.fit(model, x, None, cfg, 8, device, args.epochs, loss_fn=ranker.per_sample_loss)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rate = len(x) * args.epochs / seconds
        x.states = None
        runs[name] = {"impressions_per_second": round(rate), "seconds": round(seconds, 2),
                      "epoch_10m_minutes": round(TEN_MILLION / rate / 60, 1), "knobs": CONFIGS[name]}
        print(f"{name:9s} {device}: {rate:,.0f} impressions/s; one epoch over 10M impressions "
              f"= {TEN_MILLION / rate / 60:.1f} min")
    base = runs.get("fp32", {}).get("impressions_per_second")
    for result in runs.values():
        result["ratio_to_fp32"] = round(result["impressions_per_second"] / base, 2) if base else None
    record = {"benchmark": "train_throughput", "rows_trained": len(x), "epochs": args.epochs, "device": device,
              "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
              "batch_size": params["train"]["batch_size"], "threads": params["compute"]["threads"], "runs": runs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
