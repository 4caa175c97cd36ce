"""Ranking measured without the logged position's help: true-relevance NDCG, IPS NDCG, the trivial
baselines, the paired bootstrap over requests and the score spread, checked against independent
computations (scikit-learn, brute-force loops)."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from pipeline.model import baselines as b
from pipeline.model import metrics as m
from pipeline.model.evaluation import Scorer, check_ranking_config, ranking_comparison

CFG = {"ndcg_k": 3, "recall_k": 3, "calibration_bins": 10,
       "baselines": {"popularity_prior": 20},
       "ips": {"propensity": "examination", "eta": None, "fit_min_rows": 50, "fit_max_position": 20,
               "min_propensity": 0.05},
       "bootstrap": {"resamples": 100, "level": 0.9}}


def log_of(n_requests, length, seed=0):
    rng = np.random.default_rng(seed)
    n = n_requests * length
    position = np.tile(np.arange(1, length + 1), n_requests)
    relevance = rng.random(n)
    clicked = (rng.random(n) < relevance * position ** -0.9).astype(int)
    frame = pd.DataFrame({"request_id": np.repeat([f"r{i}" for i in range(n_requests)], length),
                          "event_id": [f"e{i}" for i in range(n)], "position": position, "clicked": clicked,
                          "purchased": (clicked & (rng.random(n) < 0.2)).astype(int),
                          "item_id": [f"i{j}" for j in rng.integers(0, 30, n)],
                          "surface": np.repeat(np.where(np.arange(n_requests) % 3 == 0, "recommend", "search"), length)})
    return frame, relevance, rng


def test_true_relevance_ndcg_matches_scikit_learn():
    impressions, relevance, rng = log_of(40, 6)
    scores = rng.random(len(impressions))  # distinct: scikit-learn averages over ties instead
    scorer = Scorer(impressions, CFG, relevance=relevance)
    value = scorer.ranking(scorer.ranks(scores))["ndcg_at_3_true"]
    expected = np.mean([ndcg_score(relevance[i * 6:(i + 1) * 6][None], scores[i * 6:(i + 1) * 6][None], k=3)
                        for i in range(40)])
    assert value == pytest.approx(expected)
    assert scorer.primary == "ndcg_at_3_true"


def test_a_request_missing_from_the_truth_drops_out_of_the_true_ndcg_whole():
    impressions, relevance, rng = log_of(10, 4)
    scores = rng.random(len(impressions))
    holed = relevance.copy()
    holed[5] = np.nan  # request 1
    scorer = Scorer(impressions, CFG, relevance=holed)
    keep = np.r_[0:4, 8:40]
    expected = np.mean([ndcg_score(relevance[i:i + 4][None], scores[i:i + 4][None], k=3) for i in keep[::4]])
    assert scorer.ranking(scorer.ranks(scores))["ndcg_at_3_true"] == pytest.approx(expected)
    assert np.isnan(scorer.per_request(scorer.ranks(scores))["ndcg_at_3_true"][1])


def test_ips_gain_is_click_over_the_examination_propensity():
    gains = m.ips_gains([1, 1, 0, 1], [1, 4, 2, 400], eta=1.0, min_propensity=0.05)
    assert gains.tolist() == pytest.approx([1.0, 4.0, 0.0, 20.0])
    logged = m.ips_gains([1, 1], [1, 4], eta=1.0, min_propensity=0.05, logged=[0.5, np.nan])
    assert logged.tolist() == pytest.approx([2.0, 4.0])
    # With eta 0 the IPS NDCG is the plain click NDCG.
    impressions, _, rng = log_of(30, 5)
    scores = rng.random(len(impressions))
    scorer = Scorer(impressions, CFG, ips_gains=m.ips_gains(impressions["clicked"], impressions["position"], 0.0, 0.05))
    ranks = scorer.ranks(scores)
    groups = scorer.groups
    assert scorer.ranking(ranks)["ndcg_at_3_ips"] == pytest.approx(
        m.ndcg_at_k_from_ranks(groups, impressions["clicked"].to_numpy(), ranks, 3))
    assert scorer.primary == "ndcg_at_3_ips"


def test_examination_exponent_is_recovered_from_position_ctr():
    rng = np.random.default_rng(1)
    position = rng.integers(1, 11, 200000)
    clicked = rng.random(len(position)) < 0.3 * position ** -0.9  # relevance independent of position
    fit = m.examination_eta(position, clicked, min_rows=100, max_position=20)
    assert fit["eta"] == pytest.approx(0.9, abs=0.05) and fit["positions_used"] == 10
    assert m.examination_eta([1, 1, 2], [1, 0, 0], 1, 20)["eta"] == 0.0  # too little evidence: no correction


def brute_force_interval(cand, other, draws, level):
    """Resample requests by concatenating their values, the plain way."""
    diffs = []
    for row in draws:
        a, c = cand[row], other[row]
        both = ~np.isnan(a) & ~np.isnan(c)
        diffs.append(a[both].mean() - c[both].mean())
    return np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])


def test_paired_bootstrap_matches_a_brute_force_resampling():
    rng = np.random.default_rng(4)
    cand = rng.random(60)
    other = cand - 0.05 + rng.normal(0, 0.02, 60)
    cand[3] = np.nan  # undefined for one request
    seed, resamples = 11, 300
    counts = m.bootstrap_counts(60, resamples, seed)
    draws = np.random.default_rng(seed).integers(0, 60, size=(resamples, 60))
    assert (counts == np.stack([np.bincount(r, minlength=60) for r in draws])).all()
    found = m.paired_group_interval(cand, other, counts, 0.9)
    lower, upper = brute_force_interval(cand, other, draws, 0.9)
    assert found["lower"] == pytest.approx(lower, abs=1e-6) and found["upper"] == pytest.approx(upper, abs=1e-6)
    assert found["lower"] < found["diff"] < found["upper"]
    assert found["diff"] == pytest.approx(np.nanmean(cand - other), abs=1e-6)
    # A constant shift has no spread; twice the requests, about 1/sqrt(2) of the width.
    shift = m.paired_group_interval(other + 0.01, other, counts, 0.9)
    assert shift["lower"] == pytest.approx(0.01) and shift["upper"] == pytest.approx(0.01)
    wide = m.paired_group_interval(np.tile(cand, 2), np.tile(other, 2), m.bootstrap_counts(120, resamples, seed), 0.9)
    assert wide["upper"] - wide["lower"] < (found["upper"] - found["lower"]) * 0.85


def test_row_metric_bootstrap_weights_equal_repeated_rows():
    impressions, _, rng = log_of(30, 5)
    codes = pd.factorize(impressions["request_id"])[0]
    clicked = impressions["clicked"].to_numpy()
    a, c = rng.random(len(clicked)), rng.random(len(clicked))
    counts = m.bootstrap_counts(30, 20, 3)
    draws = np.random.default_rng(3).integers(0, 30, size=(20, 30))
    found = m.paired_row_interval(lambda w: m.auc(clicked, a, w) - m.auc(clicked, c, w), codes, counts, 0.8)
    diffs = []
    for row in draws:
        rows = np.concatenate([np.flatnonzero(codes == g) for g in row])
        diffs.append(m.auc(clicked[rows], a[rows]) - m.auc(clicked[rows], c[rows]))
    assert found["lower"] == pytest.approx(np.quantile(diffs, 0.1), abs=1e-6)
    assert found["upper"] == pytest.approx(np.quantile(diffs, 0.9), abs=1e-6)
    # The weighted log loss and ECE are those of the repeated rows too.
    rows = np.concatenate([np.flatnonzero(codes == g) for g in draws[0]])
    w = counts[0][codes]
    assert m.logloss(clicked, a, w) == pytest.approx(m.logloss(clicked[rows], a[rows]))
    assert m.ece(clicked, a, 10, w) == pytest.approx(m.ece(clicked[rows], a[rows], 10))


def test_score_spread_tells_a_constant_score():
    groups = np.repeat([0, 1, 2], 4)
    assert m.score_spread(groups, np.full(12, 0.3)) == {"std": 0.0, "distinct_share": 0.25,
                                                         "constant_requests": 1.0, "requests": 3}
    varied = m.score_spread(groups, np.tile([0.0, 1.0, 2.0, 3.0], 3))
    assert varied["std"] == pytest.approx(np.std([0, 1, 2, 3])) and varied["constant_requests"] == 0.0


def test_popularity_is_the_shrunk_training_click_rate():
    train = pd.DataFrame({"item_id": ["a", "a", "b", "c", "c", "c"], "clicked": [1, 1, 0, 1, 0, 0]})
    rate = 0.5
    got = b.popularity_scores(train, pd.Series(["a", "b", "z"]), prior=2)
    assert got.tolist() == pytest.approx([(2 + 2 * rate) / 4, (0 + 2 * rate) / 3, rate])


def test_bad_ranking_config_is_a_clear_error():
    check_ranking_config(CFG)
    with pytest.raises(ValueError, match=r"evaluate.ips.propensity must be 'examination' or 'logged'"):
        check_ranking_config({**CFG, "ips": {**CFG["ips"], "propensity": "both"}})
    with pytest.raises(ValueError, match=r"evaluate.bootstrap.level must be a number > 0 and < 1, got 1.5"):
        check_ranking_config({**CFG, "bootstrap": {"resamples": 10, "level": 1.5}})
    with pytest.raises(ValueError, match=r"evaluate.bootstrap must be a mapping"):
        check_ranking_config({k: v for k, v in CFG.items() if k != "bootstrap"})


def comparison(candidate_scores, champion_scores, seed=0, n_requests=300):
    impressions, relevance, rng = log_of(n_requests, 8, seed)
    train = impressions.iloc[: len(impressions) // 2]
    held = impressions.iloc[len(impressions) // 2:].reset_index(drop=True)
    rel = relevance[len(impressions) // 2:]
    gains = m.ips_gains(held["clicked"], held["position"], 0.9, 0.05)
    scorer = Scorer(held, CFG, relevance=rel, ips_gains=gains)

    def model(scores):
        return {"p_click": 1 / (1 + np.exp(-scores)), "p_purchase": 0.1 / (1 + np.exp(-scores)), "score": scores}

    cand, champ = model(candidate_scores(rel, rng)), model(champion_scores(rel, rng))
    models = {"candidate": (cand, scorer.ranks(cand["score"])), "champion": (champ, scorer.ranks(champ["score"]))}
    dense = np.stack([rel + rng.normal(0, 0.5, len(rel)), np.zeros(len(rel))], axis=1)
    trivial = {"random": (b.random_scores(len(held), 1), np.ones(len(held), bool)),
               "logging_order": (b.logging_scores(held["position"]), np.ones(len(held), bool)),
               "popularity": (b.popularity_scores(train, held["item_id"], 20), np.ones(len(held), bool)),
               "encoder_cosine": (b.cosine_scores(dense, ["query_title_cosine", "x"]),
                                  held["surface"].to_numpy() == "search")}
    return ranking_comparison(scorer, held, models, trivial, CFG, seed=5)


def test_ranking_comparison_reports_models_and_baselines_with_paired_intervals():
    ranking, boot = comparison(lambda rel, rng: rel + rng.normal(0, 0.05, len(rel)),
                               lambda rel, rng: rel + rng.normal(0, 0.5, len(rel)))
    assert ranking["primary"] == "ndcg_at_3_true"
    overall = ranking["slices"]["overall"]
    assert overall["encoder_cosine"] is None and ranking["slices"]["surface=search"]["encoder_cosine"] is not None
    assert ranking["slices"]["surface=recommend"]["encoder_cosine"] is None
    assert overall["candidate"]["ndcg_at_3_true"] > overall["champion"]["ndcg_at_3_true"]
    best = ranking["best_baseline"]["overall"]["ndcg_at_3_true"]
    assert best in ("logging_order", "popularity", "random")
    assert overall[best]["ndcg_at_3_true"] == max(overall[n]["ndcg_at_3_true"] for n in ("random", "logging_order",
                                                                                          "popularity"))
    vs_champion = boot["candidate_minus_champion"]["overall"]["ndcg_at_3_true"]
    assert vs_champion["lower"] > 0
    assert vs_champion["diff"] == pytest.approx(overall["candidate"]["ndcg_at_3_true"]
                                                - overall["champion"]["ndcg_at_3_true"], abs=1e-5)
    assert set(boot["candidate_minus_champion"]["overall"]) >= {"auc_click", "logloss_click", "ndcg_at_3_ips", "mrr"}
    assert boot["candidate_minus_best_baseline"]["overall"]["ndcg_at_3_true"]["baseline"] == best
    assert "auc_click" in boot["candidate_minus_baseline"]["random"]["overall"]
    assert "encoder_cosine" in boot["candidate_minus_baseline"] and \
        set(boot["candidate_minus_baseline"]["encoder_cosine"]) == {"surface=search"}
    # Same inputs, same numbers.
    again = comparison(lambda rel, rng: rel + rng.normal(0, 0.05, len(rel)),
                       lambda rel, rng: rel + rng.normal(0, 0.5, len(rel)))
    assert again == (ranking, boot)


def test_summary_prints_the_ranking_beside_the_baselines():
    from pipeline.ops.summary import ranking_lines

    ranking, boot = comparison(lambda rel, rng: rel + rng.normal(0, 0.05, len(rel)),
                               lambda rel, rng: rel + rng.normal(0, 0.5, len(rel)), n_requests=60)
    ranking["score_spread"] = {"std": 0.2}
    lines = ranking_lines({"primary_metric": ranking["primary"], "ranking": ranking, "bootstrap": boot})
    assert lines[0].startswith("  ranking (ndcg_at_3_true; spread of the candidate's score within requests: 0.2)")
    overall = next(line for line in lines if line.strip().startswith("overall"))
    for name in ("candidate", "champion", "random", "logging_order", "popularity"):
        assert f"{name} {ranking['slices']['overall'][name]['ndcg_at_3_true']}" in overall
    assert "encoder_cosine" in next(line for line in lines if "surface=search" in line)
    assert any(line.strip().startswith("vs champion:") for line in lines)
    assert any(line.strip().startswith("vs best baseline") for line in lines)
    assert ranking_lines({"candidate": {}}) == []


def test_text_baselines_score_search_rows_only_from_their_dense_features():
    from pipeline.model import evaluation as evaluate, features

    impressions = pd.DataFrame({"surface": ["search", "search", "recommend"], "position": [1, 2, 1],
                                "item_id": ["a", "b", "a"], "clicked": [1, 0, 0]})
    names = features.DENSE_FEATURES
    dense = np.zeros((3, len(names)))
    dense[:, names.index("query_title_cosine")] = [0.9, 0.1, 0.0]
    dense[:, names.index("query_title_overlap")] = [0.2, 0.8, 0.0]
    scores = evaluate.baseline_scores(impressions, impressions, dense, names, CFG, seed=1)
    assert set(scores) == set(b.NAMES)
    for name, column in (("encoder_cosine", [0.9, 0.1, 0.0]), ("lexical_overlap", [0.2, 0.8, 0.0])):
        values, rows = scores[name]
        np.testing.assert_array_equal(values, column)
        np.testing.assert_array_equal(rows, [True, True, False])
