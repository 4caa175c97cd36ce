"""Noise injection of the estimator benchmark: each kind at its rate, seeded, the test slice untouched."""
import numpy as np
import pandas as pd
import pytest

from pipeline.importance.benchmark import noise


def clean_log(n_sessions=400, per_session=10, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_sessions * per_session
    clicked = (rng.random(n) < 0.15).astype(np.int64)
    return pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "session_id": pd.Categorical([f"s{i // per_session}" for i in range(n)]),
        "request_id": pd.Categorical([f"r{i // 5}" for i in range(n)]),
        "user_id": pd.Categorical([f"u{i // per_session % 50}" for i in range(n)]),
        "position": np.tile(np.arange(1, 6), n // 5),
        "clicked": clicked,
        "purchased": clicked * (rng.random(n) < 0.3),
    })


def test_parse_spec_reads_kinds_and_rates_and_names_what_is_wrong():
    assert noise.parse_spec("false_click:0.2,bot_sessions:0.05") == {"false_click": 0.2, "bot_sessions": 0.05}
    assert noise.parse_spec("none") == {}
    for bad, words in (("typo:0.1", "KIND:RATE"), ("false_click", "KIND:RATE"), ("false_click:x", "not a number"),
                       ("false_click:1.5", "within [0, 1]"), ("false_click:0.1,false_click:0.2", "twice")):
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            noise.parse_spec(bad)


@pytest.mark.parametrize("kind, rate", [("false_click", 0.2), ("missed_click", 0.3), ("click_flip", 0.05)])
def test_click_noise_changes_its_share_of_rows_and_only_those(kind, rate):
    log = clean_log()
    noisy, kinds = noise.inject(log, {kind: rate}, seed=1)
    changed = noisy["clicked"].to_numpy() != log["clicked"].to_numpy()
    assert np.array_equal(changed, kinds == kind)
    of = log["clicked"].sum() if kind != "click_flip" else len(log)
    assert abs(changed.sum() - rate * of) <= 1
    if kind == "false_click":
        assert (noisy["clicked"][changed] == 1).all()
    if kind == "missed_click":
        assert (noisy["clicked"][changed] == 0).all()
    assert (noisy["purchased"] <= noisy["clicked"]).all()


def test_bot_sessions_are_whole_sessions_clicking_at_the_log_rate():
    log = clean_log()
    noisy, kinds = noise.inject(log, {"bot_sessions": 0.1}, seed=2)
    bots = log["session_id"][kinds == "bot_sessions"].unique()
    assert len(bots) == 40
    in_bot = log["session_id"].isin(bots).to_numpy()
    assert np.array_equal(in_bot, kinds == "bot_sessions")  # every row of a bot session, no other row
    assert abs(noisy["clicked"][in_bot].mean() - log["clicked"].mean()) < 0.06
    assert (noisy["purchased"][in_bot] == 0).all()


def test_duplicates_follow_their_original_under_a_new_event_id():
    log = clean_log()
    noisy, kinds = noise.inject(log, {"duplicates": 0.1}, seed=3)
    copies = np.flatnonzero(kinds == "duplicates")
    assert len(copies) == 400 and len(noisy) == len(log) + 400
    originals = noisy["event_id"].iloc[copies].str.removesuffix(noise.DUPLICATE_SUFFIX).to_numpy()
    assert np.array_equal(noisy["event_id"].iloc[copies - 1].to_numpy(), originals)
    assert noisy["event_id"].is_unique
    assert isinstance(noisy["session_id"].dtype, pd.CategoricalDtype)
    clean_rows = noisy[kinds == ""].reset_index(drop=True)
    pd.testing.assert_frame_equal(clean_rows, log)


def test_protected_rows_are_never_changed_or_copied():
    log = clean_log()
    protected = np.zeros(len(log), bool)
    protected[-800:] = True
    spec = {"bot_sessions": 0.2, "click_flip": 0.2, "false_click": 0.5, "missed_click": 0.5, "duplicates": 0.3}
    noisy, kinds = noise.inject(log, spec, seed=4, protected=protected)
    tail = noisy.iloc[len(noisy) - 800:].reset_index(drop=True)
    pd.testing.assert_frame_equal(tail, log.iloc[-800:].reset_index(drop=True))
    assert (kinds[len(noisy) - 800:] == "").all()
    assert set(kinds[: len(noisy) - 800]) == {"", *spec}


def test_the_same_seed_gives_the_same_noise_and_none_gives_none():
    log = clean_log()
    spec = {"false_click": 0.2, "bot_sessions": 0.05}
    a, ka = noise.inject(log, spec, seed=5)
    b, kb = noise.inject(log, spec, seed=5)
    c, _ = noise.inject(log, spec, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert np.array_equal(ka, kb)
    assert not a["clicked"].equals(c["clicked"])
    same, kinds = noise.inject(log, noise.parse_spec("none"), seed=5)
    pd.testing.assert_frame_equal(same, log)
    assert (kinds == "").all()
