"""Next-day ranking quality of the retrained champion against the simulator's true relevance, beside
trivial baselines on the same rows.

    python benchmarks/ranking_quality.py [--days 4] [--work /tmp/ranking_quality]
        [--out benchmarks/results/ranking_quality.json]

Simulates `--days` default days. For each day d but the last, it runs the retrain's stages as the DAG
does (corpus, pretrain, importance with the default estimator, train), then scores every impression
of day d+1 with that model (its own encoder, pipeline.model.scoring) and measures NDCG@10 with the
true relevance as the gain, search and recommendations apart. Beside it, on the same rows: random,
the logging order, item popularity (day d's click rate), the zero-shot cosine of the base encoder and
of the refreshed one and the query's trigram overlap with the title (search), and the same ranker
trained on the base encoder's vectors (no refresh).
Prints one table per day and the mean, and writes them as JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.model import baselines, dataset, embeddings, features, metrics  # noqa: E402
from pipeline.data import corpus  # noqa: E402
from pipeline.data.simulate import command as simulate  # noqa: E402
from pipeline.stages import pretrain, train  # noqa: E402
from pipeline.model.scoring import model_predictions  # noqa: E402
from pipeline.params import load_params  # noqa: E402

FIRST_DAY = "2026-11-01"
K = 10
ORDERS = ("champion", "champion_without_refresh", "cosine_refreshed", "cosine_base", "lexical_overlap",
           "popularity", "logging_order", "random")
SEARCH_ONLY = ("cosine_refreshed", "cosine_base", "lexical_overlap")


def stage(*args: str) -> None:
    """A pipeline command as the DAG runs it."""
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"python -m pipeline {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def retrain(data: Path, day: str, work: Path, params: dict, params_file: Path) -> dict[str, Path]:
    """The day's champion candidate: encoder refreshed on the day, importance weights, trained ranker;
    and the same ranker on the base encoder's vectors. Returns their model folders (encoder/, ranker/)."""
    out = work / day
    pretrain.run(corpus.day_corpus(data, day), out / "pretrain", params)
    stage("importance", "--data", str(data), "--day", day, "--embeddings", str(out / "pretrain/embeddings"),
          "--params", str(params_file), "--out", str(out / "importance"))
    weights = out / "importance/scores.parquet"
    train.run(data, day, out / "pretrain/embeddings", weights, out / "train", params)
    base_params = copy.deepcopy(params)
    base_params["pretrain"]["max_steps"] = 0  # no refresh: the stage writes the base encoder and its vectors
    pretrain.run(corpus.day_corpus(data, day), out / "base", base_params)
    train.run(data, day, out / "base/embeddings", weights, out / "train_base", params)
    models = {}
    for name, encoder, model in (("champion", out / "pretrain/encoder", out / "train/model"),
                                 ("champion_without_refresh", out / "base/encoder", out / "train_base/model")):
        folder = out / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        for part, source in (("encoder", encoder), ("ranker", model)):
            if not (folder / part).exists():
                (folder / part).symlink_to(source.resolve())
        models[name] = folder
    return models


def text_match(folder: Path, impressions: pd.DataFrame, catalog: pd.DataFrame, params: dict,
               name: str = "query_title_cosine") -> np.ndarray:
    """A query-title match feature of the rows (dense feature `name`) with the encoder in `folder`:
    the cosine under that encoder, or the trigram overlap (0 without a query)."""
    from pipeline.model import encoder as enc

    tokenizer, model = enc.load_encoder(folder / "encoder")
    texts = sorted(set(features.item_titles(impressions, catalog)) | set(impressions["query"].dropna()))
    cfg = params["pretrain"]
    table = embeddings.EmbeddingTable(texts, enc.embed(model, tokenizer, texts, cfg["max_length"],
                                                       cfg["embed_batch_size"], "cpu"))
    x = features.build(impressions, catalog, table, params["ranker"]["max_position"])
    return x.dense[:, features.DENSE_FEATURES.index(name)].numpy().astype(np.float64)


def next_day_table(data: Path, day: str, next_day: str, models: dict[str, Path], params: dict) -> dict:
    impressions, catalog = dataset.read_log(data, [next_day], extra_features=True)
    logged = dataset.logged_history(data, [next_day], impressions, params)
    earlier, _ = dataset.read_log(data, [day])
    relevance = baselines.true_relevance(impressions, baselines.read_truth(data, next_day))
    scores = {name: model_predictions(folder, impressions, catalog, params, "cpu", logged)["score"]
              for name, folder in models.items()}
    scores["cosine_refreshed"] = text_match(models["champion"], impressions, catalog, params)
    scores["cosine_base"] = text_match(models["champion_without_refresh"], impressions, catalog, params)
    scores["lexical_overlap"] = text_match(models["champion_without_refresh"], impressions, catalog, params,
                                           "query_title_overlap")
    scores["popularity"] = baselines.popularity_scores(earlier, impressions["item_id"],
                                                       params["evaluate"]["baselines"]["popularity_prior"])
    scores["logging_order"] = baselines.logging_scores(impressions["position"])
    scores["random"] = baselines.random_scores(len(impressions), 1)
    table = {}
    for surface in ("search", "recommend"):
        rows = (impressions["surface"] == surface).to_numpy()
        groups = impressions["request_id"].to_numpy()[rows]
        table[surface] = {"requests": int(len(np.unique(groups)))}
        for name in ORDERS:
            if name in SEARCH_ONLY and surface == "recommend":
                continue  # a recommendation has no query
            ranks = metrics.ranks_within(groups, scores[name][rows])
            table[surface][name] = round(metrics.ndcg_at_k_from_ranks(groups, relevance[rows], ranks, K), 4)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=4, help="simulated days (the last is only scored)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ranking_quality"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ranking_quality.json")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine two threads a process mostly wait)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params = load_params(ROOT / "params.yaml")
    params["compute"]["threads"] = args.threads
    args.work.mkdir(parents=True, exist_ok=True)
    params_file = args.work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    data = args.work / "data"
    simulate.run(FIRST_DAY, args.days, data, params)
    days = [(date.fromisoformat(FIRST_DAY) + timedelta(days=k)).isoformat() for k in range(args.days)]
    results = {}
    for day, next_day in zip(days, days[1:]):
        started = time.perf_counter()
        models = retrain(data, day, args.work, params, params_file)
        results[next_day] = {"trained_on": day, **next_day_table(data, day, next_day, models, params),
                             "seconds": round(time.perf_counter() - started, 1)}
        print(f"\ntrained on {day}, scored {next_day} ({results[next_day]['seconds']} s)")
        print_table(results[next_day])
    mean = {surface: {name: round(float(np.mean([r[surface][name] for r in results.values()])), 4)
                      for name in ORDERS if name in next(iter(results.values()))[surface]}
            for surface in ("search", "recommend")}
    print("\nmean over days")
    print_table(mean)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"metric": f"ndcg_at_{K} against true relevance", "days": results, "mean": mean,
                                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                                    "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                   indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def print_table(table: dict) -> None:
    print(f"  {'order':26s} {'search':>8s} {'recommend':>10s}")
    for name in ORDERS:
        cells = [f"{table[s][name]:.4f}" if name in table[s] else "-" for s in ("search", "recommend")]
        print(f"  {name:26s} {cells[0]:>8s} {cells[1]:>10s}")


if __name__ == "__main__":
    sys.exit(main())
