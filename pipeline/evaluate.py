"""evaluate stage: candidate and champion scored on the same held-out time slice of the day."""
from __future__ import annotations

import argparse

from pipeline import metrics as m
from pipeline.atomic import atomic_dir, read_json, write_json_atomic
from pipeline.params import load_params, stage_seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout)")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--embeddings", required=True, help="candidate's embeddings (pretrain output)")
    parser.add_argument("--model", required=True, help="candidate ranker folder (train output)")
    parser.add_argument("--baseline", required=True, help="baseline.json naming the champion to compare with")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: metrics.json, calibration.csv")


def score_rows(predictions: dict, impressions, k: int, bins: int) -> dict:
    clicked = impressions["clicked"].to_numpy()
    purchased = impressions["purchased"].to_numpy()
    gains = 2.0 ** (clicked + purchased) - 1.0
    values = {
        "auc_click": m.auc(clicked, predictions["p_click"]),
        "logloss_click": m.logloss(clicked, predictions["p_click"]),
        "ece_click": m.ece(clicked, predictions["p_click"], bins),
        "auc_purchase": m.auc(purchased, predictions["p_purchase"]),
        f"ndcg_at_{k}": m.ndcg_at_k(impressions["request_id"].to_numpy(), gains, predictions["score"], k),
    }
    return {name: (round(v, 6) if v is not None else None) for name, v in values.items()}


def logged_order_ndcg(impressions, k: int) -> float | None:
    gains = 2.0 ** (impressions["clicked"] + impressions["purchased"]).to_numpy() - 1.0
    value = m.ndcg_at_k(impressions["request_id"].to_numpy(), gains, -impressions["position"].to_numpy(), k)
    return None if value is None else round(value, 6)


def champion_predictions(champion: dict, registry_dir: str, impressions, catalog, params: dict,
                         device: str) -> dict:
    """Embed the slice's texts with the champion's own encoder, then score with its ranker."""
    from pipeline import encoder as enc
    from pipeline import features, ranker, registry
    from pipeline.embeddings import EmbeddingTable

    folder = registry.model_dir(registry_dir, champion)
    tokenizer, model = enc.load_encoder(folder / "encoder")
    texts = sorted(set(features.item_titles(impressions, catalog)) | set(impressions["query"].dropna()))
    cfg = params["pretrain"]
    table = EmbeddingTable(texts, enc.embed(model, tokenizer, texts, cfg["max_length"], cfg["embed_batch_size"], device))
    x = features.build(impressions, catalog, table, params["ranker"]["max_position"])
    return ranker.predict(ranker.load(folder / "ranker"), x, device, with_position=True)


def run(data_dir, day: str, embeddings_dir, model_dir, baseline_file, out_dir, params: dict) -> dict:
    from pipeline import ranker
    from pipeline.compute import setup
    from pipeline.dataset import load_day

    cfg = params["evaluate"]
    device = setup(params, stage_seed(params, "evaluate"))
    data = load_day(data_dir, day, embeddings_dir, params)
    rows = data.holdout_index
    impressions = data.impressions.iloc[rows].reset_index(drop=True)
    if len(impressions) == 0:
        raise ValueError(f"{day}: the held-out slice is empty (split.holdout_fraction too small?)")
    candidate = ranker.predict(ranker.load(model_dir), data.x.subset(rows), device, with_position=True)
    champion = read_json(baseline_file)["champion"]
    result = {"day": day, "rows": int(len(impressions)), "requests": int(impressions["request_id"].nunique()),
              "candidate": score_rows(candidate, impressions, cfg["ndcg_k"], cfg["calibration_bins"]),
              "champion": None, "champion_id": None,
              # The logged order, for reference; position bias flatters it on logged clicks.
              "logging_policy": {f"ndcg_at_{cfg['ndcg_k']}": logged_order_ndcg(impressions, cfg["ndcg_k"])}}
    if champion is not None:
        predictions = champion_predictions(champion, params["registry"]["dir"], impressions, data.catalog,
                                           params, device)
        result["champion"] = score_rows(predictions, impressions, cfg["ndcg_k"], cfg["calibration_bins"])
        result["champion_id"] = champion["model_id"]
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "metrics.json", result)
        m.calibration_table(impressions["clicked"].to_numpy(), candidate["p_click"],
                            cfg["calibration_bins"]).to_csv(tmp / "calibration.csv", index=False)
    print(f"evaluate: {day} candidate {result['candidate']}"
          + (f"; champion {result['champion_id']} {result['champion']}" if champion else "; no champion yet"))
    return result


def main(args: argparse.Namespace) -> int:
    run(args.data, args.day, args.embeddings, args.model, args.baseline, args.out, load_params(args.params))
    return 0
