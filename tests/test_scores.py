"""Scores (SPEC 8): reference tables, human-normalised scores, aggregates and their bootstrap CIs."""
import numpy as np
import pytest

from twm_fast.envs import ATARI_100K_GAMES
from twm_fast.envs.catch import CATCH_OPTIMAL_SCORE, CATCH_RANDOM_SCORE
from twm_fast.envs.scores import (
    HUMAN_SCORES,
    PAPER_AGGREGATES,
    PAPER_SCORES,
    RANDOM_SCORES,
    aggregate_scores,
    human_normalized_score,
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
