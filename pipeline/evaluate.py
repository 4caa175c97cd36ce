"""evaluate stage: candidate and champion scored on the same held-out time slice of the day, overall
and per slice (pipeline/slices.py)."""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from pipeline import metrics as m
from pipeline.atomic import atomic_dir, read_json, write_json_atomic
from pipeline.params import load_params, stage_seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="raw data folder (DATA_CONTRACT.md layout); its earlier "
                                                      "days tell which items are new")
    parser.add_argument("--day", required=True, help="YYYY-MM-DD")
    parser.add_argument("--embeddings", required=True, help="candidate's embeddings (pretrain output)")
    parser.add_argument("--model", required=True, help="candidate ranker folder (train output)")
    parser.add_argument("--encoder", default=None,
                        help="candidate's encoder (pretrain output); needed for a ranker that tunes its top layers")
    parser.add_argument("--baseline", required=True, help="baseline.json naming the champion to compare with")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: metrics.json, calibration.csv")
    parser.add_argument("--window", default=None,
                        help="run/window.json: the earlier days new items are told by (default: every earlier "
                             "day of --data, or the last evaluate.slices.new_item_history_days)")


class Scorer:
    """The metrics of one model's predictions on the held-out rows or any subset of them.

    Ranks within each request are worked out once per model (`ranks`), so a slice of items is scored
    at the rank the model gave it in the whole list. Clicks are the relevant rows of MRR and recall;
    NDCG's gain counts a click once and a purchase again.
    """

    def __init__(self, impressions: pd.DataFrame, cfg: dict):
        self.groups = pd.factorize(impressions["request_id"])[0]
        self.clicked = impressions["clicked"].to_numpy()
        self.purchased = impressions["purchased"].to_numpy()
        self.gains = 2.0 ** (self.clicked + self.purchased) - 1.0
        self.ndcg_k, self.recall_k, self.bins = cfg["ndcg_k"], cfg["recall_k"], cfg["calibration_bins"]

    def ranks(self, scores: np.ndarray) -> np.ndarray:
        return m.ranks_within(self.groups, scores)

    def ranking(self, ranks: np.ndarray, rows: np.ndarray | None = None) -> dict:
        rows = slice(None) if rows is None else rows
        groups, clicked, ranks = self.groups[rows], self.clicked[rows], ranks[rows]
        return {f"ndcg_at_{self.ndcg_k}": m.ndcg_at_k_from_ranks(groups, self.gains[rows], ranks, self.ndcg_k),
                "mrr": m.mrr_from_ranks(groups, clicked > 0, ranks),
                f"recall_at_{self.recall_k}": m.recall_at_k_from_ranks(groups, clicked > 0, ranks, self.recall_k)}

    def score(self, predictions: dict, ranks: np.ndarray, rows: np.ndarray | None = None) -> dict:
        """Every metric; None where it is undefined on these rows (one class, no click), never 0.5."""
        pick = slice(None) if rows is None else rows
        clicked, p_click = self.clicked[pick], predictions["p_click"][pick]
        values = {"auc_click": m.auc(clicked, p_click),
                  "logloss_click": m.logloss(clicked, p_click),
                  "ece_click": m.ece(clicked, p_click, self.bins),
                  "auc_purchase": m.auc(self.purchased[pick], predictions["p_purchase"][pick]),
                  **self.ranking(ranks, rows)}
        return rounded(values)


def rounded(values: dict) -> dict:
    return {name: (round(v, 6) if v is not None else None) for name, v in values.items()}


def champion_predictions(champion: dict, registry_dir: str, impressions, catalog, params: dict,
                         device: str) -> dict:
    """The champion's predictions, its texts embedded with its own encoder."""
    from pipeline import registry
    from pipeline.model_scoring import model_predictions

    return model_predictions(registry.model_dir(registry_dir, champion), impressions, catalog, params, device)


def scored_slices(scorer: Scorer, masks: dict, models: dict) -> dict:
    """{slice: {rows, requests, candidate, champion}}; `models` maps a name to (predictions, ranks) or None."""
    out = {}
    for name, mask in masks.items():
        rows = np.flatnonzero(mask)
        out[name] = {"rows": int(len(rows)), "requests": int(len(np.unique(scorer.groups[rows])))}
        for model, scored in models.items():
            out[name][model] = None if scored is None else scorer.score(*scored, rows)
    return out


def check_config(cfg: dict) -> None:
    """Fail before any model is loaded when a knob cannot be used as written."""
    for key in ("ndcg_k", "recall_k", "calibration_bins"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"evaluate.{key} must be a whole number >= 1, got {value!r}")
    if not isinstance(cfg.get("slices"), dict):
        raise ValueError("evaluate.slices must be a mapping with by, head_query_min_requests and "
                         "new_item_history_days")


def window_days(window_file) -> list[str] | None:
    """The earlier days a window manifest (pipeline.repro writes run/window.json) lists, oldest first."""
    if window_file is None:
        return None
    manifest = read_json(window_file)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("previous"), list):
        raise ValueError(f"{window_file}: expected a window manifest with a 'previous' list of days")
    return sorted(entry["day"] for entry in manifest["previous"])


def run(data_dir, day: str, embeddings_dir, model_dir, baseline_file, out_dir, params: dict,
        window_file=None, encoder_dir=None) -> dict:
    from pipeline import embeddings, ranker, slices, text_tower
    from pipeline.compute import setup
    from pipeline.dataset import load_day

    cfg = params["evaluate"]
    check_config(cfg)
    slices.check_config(cfg["slices"])
    device = setup(params, stage_seed(params, "evaluate"))
    data = load_day(data_dir, day, embeddings_dir, params)
    rows = data.holdout_index
    impressions = data.impressions.iloc[rows].reset_index(drop=True)
    if len(impressions) == 0:
        raise ValueError(f"{day}: the held-out slice is empty (split.holdout_fraction too small?)")
    masks, slicing = slices.build(impressions, data.impressions, data.catalog, data_dir, day, cfg["slices"],
                                  window_days(window_file))
    scorer = Scorer(impressions, cfg)
    candidate_model = ranker.load(model_dir)
    if candidate_model.config.tower_layers:
        if encoder_dir is None:
            raise ValueError(f"{model_dir} tunes the encoder's top layers: pass --encoder (the pretrain output)")
        _, data.x.states = text_tower.states_for(encoder_dir, embeddings.load(embeddings_dir).texts,
                                                 candidate_model.config.tower_layers, params, device)
    candidate = ranker.predict(candidate_model, data.x.subset(rows), device, with_position=True)
    models = {"candidate": (candidate, scorer.ranks(candidate["score"])), "champion": None}
    champion = read_json(baseline_file)["champion"]
    if champion is not None:
        predictions = champion_predictions(champion, params["registry"]["dir"], impressions, data.catalog,
                                           params, device)
        models["champion"] = (predictions, scorer.ranks(predictions["score"]))
    result = {"day": day, "rows": int(len(impressions)), "requests": int(impressions["request_id"].nunique()),
              "candidate": scorer.score(*models["candidate"]),
              "champion": None if champion is None else scorer.score(*models["champion"]),
              "champion_id": None if champion is None else champion["model_id"],
              # The logged order, for reference; position bias flatters it on logged clicks.
              "logging_policy": rounded(scorer.ranking(scorer.ranks(-impressions["position"].to_numpy()))),
              "slices": scored_slices(scorer, masks, models), "slicing": slicing}
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "metrics.json", result)
        m.calibration_table(impressions["clicked"].to_numpy(), candidate["p_click"],
                            cfg["calibration_bins"]).to_csv(tmp / "calibration.csv", index=False)
    print(f"evaluate: {day} candidate {result['candidate']}"
          + (f"; champion {result['champion_id']} {result['champion']}" if champion else "; no champion yet")
          + f"; {len(masks)} slices")
    return result


def main(args: argparse.Namespace) -> int:
    run(args.data, args.day, args.embeddings, args.model, args.baseline, args.out, load_params(args.params),
        args.window, args.encoder)
    return 0
