"""Scores (SPEC 8): reference tables, human-normalised scores, aggregates and their bootstrap CIs."""
import numpy as np
import pytest

from twm_fast.envs import ATARI_100K_GAMES
from twm_fast.envs.catch import CATCH_OPTIMAL_SCORE, CATCH_RANDOM_SCORE
from twm_fast.envs.scores import (
    HUMAN_SCORES,
    PAPER_AGGREGATES,
    PAPER_SCORES,
    PUBLISHED_RUN_SCORES,
    RANDOM_SCORES,
    aggregate_scores,
    human_normalized_score,
    performance_profile,
    probability_of_improvement,
)

# 3 runs x 4 games, small enough to aggregate by hand (see test_aggregates_by_hand).
HAND_HNS = np.array([
    [0.0, 0.5, 1.0, 3.0],
    [0.2, 0.7, 1.2, -1.0],
    [0.1, 0.6, 0.8, 2.0],
])


def test_tables_cover_the_26_games_and_catch():
    assert len(ATARI_100K_GAMES) == 26
    assert set(RANDOM_SCORES) == set(HUMAN_SCORES) == {*ATARI_100K_GAMES, "catch"}
    assert set(PAPER_SCORES) == set(ATARI_100K_GAMES)
    assert all(HUMAN_SCORES[game] > RANDOM_SCORES[game] for game in RANDOM_SCORES)
    assert (RANDOM_SCORES["catch"], HUMAN_SCORES["catch"]) == (CATCH_RANDOM_SCORE, CATCH_OPTIMAL_SCORE)


def test_paper_scores_reproduce_the_paper_mean_and_median():
    # A typo in any of the 78 random, human or TWM numbers would move these Table 1 aggregates.
    hns = np.array([[human_normalized_score(game, PAPER_SCORES[game]) for game in ATARI_100K_GAMES]])
    aggregates = aggregate_scores(hns, reps=10)
    assert round(aggregates["mean"].value, 3) == PAPER_AGGREGATES["mean"]
    assert round(aggregates["median"].value, 3) == PAPER_AGGREGATES["median"]


@pytest.mark.parametrize("game, score, expected", [
    ("Pong", -20.7, 0.0),
    ("Pong", 14.6, 1.0),
    ("pong", -3.05, 0.5),             # halfway between random (-20.7) and human (14.6)
    ("ms_pacman", 307.3, 0.0),
    ("Breakout", 30.5 + 28.8, 2.0),   # twice human's margin over random (28.8)
    ("Freeway", 0.0, 0.0),
    ("catch", CATCH_RANDOM_SCORE, 0.0),
    ("catch", 5.0, 1.0),
])
def test_human_normalized_score(game, score, expected):
    assert human_normalized_score(game, score) == pytest.approx(expected)


def test_human_normalized_score_unknown_game():
    with pytest.raises(ValueError, match="did you mean Pong"):
        human_normalized_score("Pongg", 0.0)


def test_aggregates_by_hand():
    aggregates = aggregate_scores(HAND_HNS, reps=200)
    # Per-game means over runs: 0.1, 0.6, 1.0, 4/3.
    assert aggregates["mean"].value == pytest.approx((0.1 + 0.6 + 1.0 + 4 / 3) / 4)
    assert aggregates["median"].value == pytest.approx((0.6 + 1.0) / 2)
    # 12 sorted scores -1, 0, 0.1 | 0.2, 0.5, 0.6, 0.7, 0.8, 1.0 | 1.2, 2, 3: the middle 6.
    assert aggregates["iqm"].value == pytest.approx(3.8 / 6)
    # max(0, 1 - x) is nonzero for 0, 0.5, 0.2, 0.7, 0.1, 0.6, 0.8, -1: 1 + .5 + .8 + .3 + .9 + .4 + .2 + 2.
    assert aggregates["optimality_gap"].value == pytest.approx(6.1 / 12)


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    hns = np.random.default_rng(0).lognormal(size=(5, 7))   # 35 scores: an odd count
    assert aggregate_scores(hns, reps=10)["iqm"].value == pytest.approx(stats.trim_mean(hns, 0.25, axis=None))


@pytest.mark.parametrize("shape", [(5, 26), (3, 7)])
def test_confidence_intervals_contain_the_estimate(shape):
    hns = np.random.default_rng(1).gamma(shape=1.0, scale=0.6, size=shape)
    for name, (value, low, high) in aggregate_scores(hns, reps=500).items():
        assert low <= value <= high, name
        assert low < high, name


def test_bootstrap_is_stratified_by_game():
    # Runs that agree on every game leave nothing to resample: the CIs collapse to the estimate. A
    # bootstrap that resampled games, rather than runs within each game, would not.
    hns = np.tile(np.linspace(-0.5, 2.0, 9), (4, 1))                      # (runs=4, games=9)
    for name, (value, low, high) in aggregate_scores(hns, reps=200).items():
        assert low == pytest.approx(value) and high == pytest.approx(value), name


def test_aggregates_are_seeded_and_accept_one_run():
    hns = np.random.default_rng(2).normal(size=(4, 6))
    assert aggregate_scores(hns, reps=100, seed=3) == aggregate_scores(hns, reps=100, seed=3)
    assert aggregate_scores(hns, reps=100, seed=3) != aggregate_scores(hns, reps=100, seed=4)
    assert aggregate_scores(hns[0], reps=10) == aggregate_scores(hns[:1], reps=10)


# ---- TWM's published per-run scores, unequal run counts, rliable ---------------------------------


def published_hns():
    """(5 runs, 26 games) of TWM's published per-run scores, human-normalised."""
    return np.array([[human_normalized_score(g, s) for s in PUBLISHED_RUN_SCORES[g]] for g in ATARI_100K_GAMES]).T


def test_published_runs_give_table_1():
    assert set(PUBLISHED_RUN_SCORES) == set(ATARI_100K_GAMES)
    for game, runs in PUBLISHED_RUN_SCORES.items():
        # Table 1 rounds to one decimal: Qbert's runs average 3330.85, printed 3330.9.
        assert len(runs) == 5 and np.mean(runs) == pytest.approx(PAPER_SCORES[game], abs=0.051), game
    aggregates = aggregate_scores(published_hns(), reps=10)
    for name in ("mean", "median", "iqm", "optimality_gap"):
        assert round(aggregates[name].value, 3) == PAPER_AGGREGATES[name], name


def test_unequal_run_counts_keep_every_run():
    # Game 0 has 3 runs, game 1 one run: no truncation to one run per game.
    per_game = [[0.0, 1.0, 2.0], [4.0]]
    aggregates = aggregate_scores(per_game, reps=300)
    assert aggregates["mean"].value == pytest.approx((1.0 + 4.0) / 2), "each game's own mean, then over games"
    assert aggregates["median"].value == pytest.approx(2.5)
    # IQM over all 4 scores 0, 1, 2, 4: trim int(0.25 * 4) = 1 from each end.
    assert aggregates["iqm"].value == pytest.approx(1.5)
    assert aggregates["optimality_gap"].value == pytest.approx((1.0 + 0.0 + 0.0 + 0.0) / 4)
    # A single run of game 1 leaves it nothing to resample: its mean stays 4 in every replicate.
    assert aggregates["mean"].ci_low >= (0.0 + 4.0) / 2 and aggregates["mean"].ci_high <= (2.0 + 4.0) / 2
    # Equal counts given as a ragged list or as an array are the same thing.
    hns = np.random.default_rng(5).normal(size=(3, 4))
    assert aggregate_scores([hns[:, g] for g in range(4)], reps=50) == aggregate_scores(hns, reps=50)


def test_probability_of_improvement_known_inputs():
    # Game 0: X beats Y in every pair; game 1: one pair of three ties, X loses the others.
    x, y = [[5.0, 6.0], [1.0]], [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    assert probability_of_improvement(x, y, reps=100).value == pytest.approx((1.0 + 0.5 / 3) / 2)
    same = np.random.default_rng(1).normal(size=(4, 6))
    assert probability_of_improvement(same, same, reps=100).value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same games"):
        probability_of_improvement(x, y[:1])


def test_performance_profile_known_inputs():
    values, low, high = performance_profile([[0.0, 1.0], [2.0]], np.array([-1.0, 0.5, 1.5, 3.0]), reps=100)
    np.testing.assert_allclose(values, [1.0, (0.5 + 1.0) / 2, (0.0 + 1.0) / 2, 0.0])
    assert (low <= values).all() and (values <= high).all()


@pytest.fixture(scope="module")
def rliable():
    pytest.importorskip("rliable")
    from rliable import library, metrics
    return library, metrics


def test_rliable_iqm_on_a_fixed_array(rliable):
    _, metrics = rliable
    hns = np.array([[0.1, 2.0, -0.3], [0.7, 1.1, 0.4], [0.2, 0.9, 5.0], [0.0, 0.6, 0.3]])
    # 12 sorted scores -0.3, 0.0, 0.1 | 0.2, 0.3, 0.4, 0.6, 0.7, 0.9 | 1.1, 2.0, 5.0: the middle 6.
    assert metrics.aggregate_iqm(hns) == pytest.approx(3.1 / 6)
    assert aggregate_scores(hns, reps=10)["iqm"].value == pytest.approx(3.1 / 6)


def test_our_aggregates_equal_rliables(rliable):
    library, metrics = rliable
    hns = published_hns()
    ours = aggregate_scores(hns, reps=2000)
    funcs = [metrics.aggregate_mean, metrics.aggregate_median, metrics.aggregate_iqm, metrics.aggregate_optimality_gap]
    point, ci = library.get_interval_estimates({"twm": hns}, lambda x: np.array([f(x) for f in funcs]),
                                               reps=2000, random_state=np.random.RandomState(0))
    for i, name in enumerate(("mean", "median", "iqm", "optimality_gap")):
        assert ours[name].value == pytest.approx(point["twm"][i]), name
        # Both are 2,000-replicate percentile intervals of the same stratified bootstrap.
        assert ours[name].ci_low == pytest.approx(ci["twm"][0, i], abs=0.03), name
        assert ours[name].ci_high == pytest.approx(ci["twm"][1, i], abs=0.03), name
    taus = np.linspace(0.0, 2.0, 9)
    profile, _ = library.create_performance_profile({"twm": hns}, taus, reps=10)
    np.testing.assert_allclose(performance_profile(hns, taus, reps=10)[0], profile["twm"])
    x = hns[:3] + 0.05
    improvement = metrics.probability_of_improvement(x, hns)
    assert probability_of_improvement(x, hns, reps=10).value == pytest.approx(improvement)
