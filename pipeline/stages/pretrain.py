"""pretrain stage: refresh the text encoder on the day's corpus when it retrieves better, and embed
the day's texts (the refresh itself: pipeline/model/refresh.py). The refresh's loss per step goes to
live/plots/metrics/ for `dvc plots`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.compute import setup
from pipeline.data import corpus as corpus_mod
from pipeline.model import embeddings
from pipeline.model.refresh import (
    check_knobs,
    mean_window,
    measure,
    refresh_decision,
    retrieval_set,
    split_texts,
    step_losses,
    too_few_pairs,
    training_pairs,
)
from pipeline.params import load_params, stage_seed
from pipeline.reports import live


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", help="corpus folder written by `python -m pipeline corpus`")
    parser.add_argument("--data", help="raw data folder (DATA_CONTRACT.md layout), instead of --corpus")
    parser.add_argument("--day", help="YYYY-MM-DD, with --data")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True,
                        help="output folder: encoder/, embeddings/, metrics.json, live/ (loss per step)")


def run(corpus: corpus_mod.Corpus, out_dir: str | Path, params: dict) -> dict:
    from pipeline.model import encoder as enc  # torch and transformers load only when a stage runs

    cfg = params["pretrain"]
    check_knobs(cfg)
    seed = stage_seed(params, "pretrain")
    device = setup(params, seed)
    split = split_texts(corpus.texts, cfg, seed)
    retrieval = retrieval_set(corpus, cfg, seed)
    contrastive = enc.contrastive_settings(cfg)
    pairs = training_pairs(corpus, split, retrieval) if contrastive is not None else None
    tokenizer, model = enc.load_base(cfg["base_model"], cfg.get("tiny_bert", {}), seed)
    before = measure(model, tokenizer, split, retrieval, cfg, seed, device)
    started = time.perf_counter()
    losses: dict = {"mlm": [], "contrastive": []}
    # A day of a handful of clicks leaves nothing to refresh on: the base encoder, said so.
    skipped = too_few_pairs(pairs) if retrieval is not None else None
    if retrieval is not None and skipped is None:
        with tqdm(total=cfg["max_steps"], desc="pretrain (refresh)", unit="step") as bar:
            losses = enc.refresh(model, tokenizer, split.train, cfg, seed, device, pairs=pairs, progress=bar)
    refresh_seconds = time.perf_counter() - started
    refreshed = retrieval is not None and skipped is None
    after = measure(model, tokenizer, split, retrieval, cfg, seed, device) if refreshed else before
    used, decision = refresh_decision(before["recall"], after["recall"], cfg) if skipped is None else (False, skipped)
    if not used and refreshed:  # the refresh did not help: what comes out is the base encoder
        tokenizer, model = enc.load_base(cfg["base_model"], cfg.get("tiny_bert", {}), seed)
    vectors = enc.embed(model.base_model, tokenizer, corpus.texts, cfg["max_length"], cfg["embed_batch_size"], device)
    k = cfg["recall"]["k"]
    mlm_first, mlm_last = mean_window(losses["mlm"])
    metrics = {
        "base_model": cfg["base_model"],
        "steps": max(len(losses["mlm"]), len(losses["contrastive"])),
        "refresh_used": used,
        "refresh_decision": decision,
        "texts": len(corpus.texts),
        "train_texts": len(split.train),
        "heldout_texts": len(split.heldout),
        "mlm_loss_first": mlm_first,
        "mlm_loss_last": mlm_last,
        "mlm_loss_heldout_before": before["mlm_loss_heldout"],
        "mlm_loss_heldout_after": after["mlm_loss_heldout"],
        f"recall_at_{k}_before": before["recall"],
        f"recall_at_{k}_after": after["recall"],
        "recall_pairs": 0 if retrieval is None else len(retrieval.queries),
        "recall_candidates": 0 if retrieval is None else len(retrieval.candidates),
        "contrastive": contrastive is not None,
        "device": device,
    }
    if contrastive is not None:
        metrics["contrastive_pairs"] = len(pairs)
        metrics["contrastive_loss_first"], metrics["contrastive_loss_last"] = mean_window(losses["contrastive"])
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "encoder")
        embeddings.save(tmp / "embeddings", corpus.texts, vectors)
        write_json_atomic(tmp / "metrics.json", metrics)
        live.write_step_metrics(tmp / live.LIVE_DIR, step_losses(losses, cfg, contrastive))
    print(f"pretrain: {metrics['steps']} steps in {refresh_seconds:.1f}s; held-out MLM loss "
          f"{before['mlm_loss_heldout']} -> {after['mlm_loss_heldout']}; recall@{k} "
          f"{before['recall']} -> {after['recall']} ({metrics['recall_pairs']} pairs); {decision}; "
          f"{len(corpus.texts)} texts embedded")
    return metrics


def main(args: argparse.Namespace) -> int:
    if args.corpus is not None:
        if args.data is not None or args.day is not None:
            raise SystemExit("pretrain: give --corpus, or --data with --day, not both")
        corpus = corpus_mod.load(args.corpus)
    elif args.data is not None and args.day is not None:
        corpus = corpus_mod.day_corpus(args.data, args.day)
    else:
        raise SystemExit("pretrain: give --corpus DIR, or --data DIR with --day YYYY-MM-DD")
    run(corpus, args.out, load_params(args.params))
    return 0
