"""pretrain stage: refresh the text encoder on the day's titles and queries, then embed them."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import embeddings
from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.compute import setup
from pipeline.contract import read_catalog, read_impressions
from pipeline.params import load_params, stage_seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: encoder/, embeddings/, metrics.json")


def day_texts(data_dir: str | Path, day: str) -> list[str]:
    """Every title and query the day's ranker needs, sorted so the output is deterministic."""
    impressions = read_impressions(data_dir, day)
    catalog = read_catalog(data_dir, day)
    queries = impressions["query"].dropna()
    return sorted(set(catalog["title"].dropna()) | set(queries[queries.str.len() > 0]))


def run(data_dir: str | Path, day: str, out_dir: str | Path, params: dict) -> dict:
    from pipeline import encoder as enc  # torch and transformers load only when a stage runs

    cfg = params["pretrain"]
    seed = stage_seed(params, "pretrain")
    device = setup(params, seed)
    texts = day_texts(data_dir, day)
    tokenizer, model = enc.load_base(cfg["base_model"], cfg.get("tiny_bert", {}), seed)
    sample = texts
    if len(texts) > cfg["max_texts"]:
        picked = np.random.default_rng(seed).choice(len(texts), cfg["max_texts"], replace=False)
        sample = [texts[i] for i in sorted(picked)]
    started = time.perf_counter()
    with tqdm(total=cfg["max_steps"], desc="pretrain (masked LM)", unit="step") as bar:
        losses = enc.refresh(model, tokenizer, sample, cfg, seed, device, progress=bar)
    refresh_seconds = time.perf_counter() - started
    vectors = enc.embed(model.base_model, tokenizer, texts, cfg["max_length"], cfg["embed_batch_size"], device)
    window = max(1, len(losses) // 5)
    metrics = {
        "base_model": cfg["base_model"],
        "steps": len(losses),
        "texts": len(texts),
        "mlm_loss_first": round(sum(losses[:window]) / window, 6) if losses else None,
        "mlm_loss_last": round(sum(losses[-window:]) / window, 6) if losses else None,
        "device": device,
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "encoder")
        embeddings.save(tmp / "embeddings", texts, vectors)
        write_json_atomic(tmp / "metrics.json", metrics)
    print(f"pretrain: {day} {len(losses)} steps in {refresh_seconds:.1f}s, "
          f"MLM loss {metrics['mlm_loss_first']} -> {metrics['mlm_loss_last']}, {len(texts)} texts embedded")
    return metrics


def main(args: argparse.Namespace) -> int:
    run(args.data, args.day, args.out, load_params(args.params))
    return 0
