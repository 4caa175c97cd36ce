"""evaluate stage: candidate and champion scored on the same held-out time slice of the day, beside
trivial baselines; the measures themselves are pipeline/model/evaluation.py's. The candidate's click
prediction on those rows is also drawn for `dvc plots`: calibration.csv (reliability per probability
bin) and live/plots/custom/{roc,precision_recall}.json.
"""
from __future__ import annotations

import argparse

import numpy as np

from pipeline.atomic import atomic_dir, read_json, write_json_atomic
from pipeline.model import metrics as m
from pipeline.model.evaluation import (
    Scorer,
    baseline_scores,
    check_config,
    check_ranking_config,
    ips_setup,
    ranking_comparison,
    rounded,
    scored_slices,
    window_days,
)
from pipeline.params import load_params, stage_seed
from pipeline.reports import live


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
    parser.add_argument("--out", required=True,
                        help="output folder: metrics.json, calibration.csv, live/ (ROC and precision-recall)")
    parser.add_argument("--window", default=None,
                        help="run/window.json: the earlier days new items are told by (default: every earlier "
                             "day of --data, or the last evaluate.slices.new_item_history_days)")


def champion_predictions(champion: dict, registry_dir: str, impressions, catalog, params: dict,
                         device: str, history=None) -> dict:
    """The champion's predictions, its texts embedded with its own encoder; `history`: the clicks its
    history features read (dataset.logged_history)."""
    from pipeline.model.scoring import model_predictions
    from pipeline.release import champions  # the registry: read by the stage, never by the measures

    return model_predictions(champions.model_dir(registry_dir, champion), impressions, catalog, params, device,
                             history)


def run(data_dir, day: str, embeddings_dir, model_dir, baseline_file, out_dir, params: dict,
        window_file=None, encoder_dir=None) -> dict:
    import torch

    from pipeline.compute import setup
    from pipeline.model import baselines, embeddings, features, ranker, slices, text_tower
    from pipeline.model.dataset import load_day

    cfg = params["evaluate"]
    check_config(cfg)
    check_ranking_config(cfg)
    slices.check_config(cfg["slices"])
    device = setup(params, stage_seed(params, "evaluate"))
    data = load_day(data_dir, day, embeddings_dir, params)
    rows = data.holdout_index
    impressions = data.impressions.iloc[rows].reset_index(drop=True)
    if len(impressions) == 0:
        raise ValueError(f"{day}: the held-out slice is empty (split.holdout_fraction too small?)")
    train_rows = data.impressions.iloc[data.train_index]
    masks, slicing = slices.build(impressions, data.impressions, data.catalog, data_dir, day, cfg["slices"],
                                  window_days(window_file))
    truth = baselines.read_truth(data_dir, day)
    relevance = None if truth is None else baselines.true_relevance(impressions, truth)
    ips_gains, ips_info = ips_setup(impressions, train_rows, cfg)
    scorer = Scorer(impressions, cfg, relevance, ips_gains, stage_seed(params, "evaluate_ties"))
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
        from pipeline.model.dataset import logged_history

        predictions = champion_predictions(champion, params["registry"]["dir"], impressions, data.catalog,
                                           params, device, logged_history(data_dir, [day], data.impressions, params))
        models["champion"] = (predictions, scorer.ranks(predictions["score"]))
    dense = data.x.dense[torch.as_tensor(rows)].numpy()
    trivial = baseline_scores(impressions, train_rows, dense, features.DENSE_FEATURES, cfg,
                              stage_seed(params, "evaluate_random_baseline"))
    ranking, bootstrap = ranking_comparison(scorer, impressions, {k: v for k, v in models.items() if v is not None},
                                            trivial, cfg, stage_seed(params, "evaluate_bootstrap"))
    spread = m.score_spread(scorer.groups, candidate["score"])
    ranking.update(score_spread=rounded(spread), ips=ips_info,
                   truth={"available": truth is not None,
                          "rows_without_truth": None if relevance is None else int(np.isnan(relevance).sum())})
    result = {"day": day, "rows": int(len(impressions)), "requests": int(impressions["request_id"].nunique()),
              "clicks": int(scorer.clicked.sum()), "purchases": int(scorer.purchased.sum()),
              "candidate": {**scorer.score(*models["candidate"]), "score_spread": ranking["score_spread"]["std"]},
              "champion": None if champion is None else scorer.score(*models["champion"]),
              "champion_id": None if champion is None else champion["model_id"],
              "primary_metric": scorer.primary,
              "ranking": ranking, "bootstrap": bootstrap,
              # The logged order, for reference; position bias flatters it on logged clicks.
              "logging_policy": rounded(scorer.ranking(scorer.ranks(-impressions["position"].to_numpy()))),
              "slices": scored_slices(scorer, masks, models), "slicing": slicing}
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "metrics.json", result)
        m.calibration_table(impressions["clicked"].to_numpy(), candidate["p_click"],
                            cfg["calibration_bins"]).to_csv(tmp / "calibration.csv", index=False)
        write_click_curves(tmp / live.LIVE_DIR, impressions["clicked"].to_numpy(), candidate["p_click"],
                           cfg["curve_points"])
    overall = ranking["slices"]["overall"]
    print(f"evaluate: {day} candidate {result['candidate']}"
          + (f"; champion {result['champion_id']} {result['champion']}" if champion else "; no champion yet")
          + f"; {scorer.primary}: candidate {overall['candidate'].get(scorer.primary)}, baselines "
          + ", ".join(f"{b} {overall[b].get(scorer.primary)}" for b in trivial if overall.get(b))
          + f"; {len(masks)} slices")
    return result


def write_click_curves(live_dir, clicked: np.ndarray, p_click: np.ndarray, points: int) -> None:
    """The click prediction's ROC and precision-recall curves, at most `points` points each."""
    live.write_table(live_dir, "roc", m.roc_points(clicked, p_click, points), x="fpr", y="tpr", template="simple")
    live.write_table(live_dir, "precision_recall", m.precision_recall_points(clicked, p_click, points),
                     x="recall", y="precision", template="simple")


def main(args: argparse.Namespace) -> int:
    run(args.data, args.day, args.embeddings, args.model, args.baseline, args.out, load_params(args.params),
        args.window, args.encoder)
    return 0
