"""Scores (SPEC 8): human-normalised scores and their aggregates with stratified-bootstrap CIs.

The random and human scores of the 26 Atari 100k games are those of Table 1 of the paper. For Catch
the "random" reference is the uniformly random policy and the "human" one the perfect player
(``twm_fast.envs.catch``).

Aggregates follow Agarwal et al. (2021), "Deep RL at the edge of the statistical precipice" (the
rliable library), on a (runs, games) array of human-normalised scores:

- mean: the mean over games of the mean over runs;
- median: the median over games of the mean over runs;
- IQM: the interquartile mean, the mean of the middle 50% of all runs x games scores
  (scipy.stats.trim_mean(..., 0.25) of the flattened array);
- optimality gap: the mean of max(0, 1 - x), how far the scores fall short of human level.

Each comes with a 95% percentile confidence interval from a stratified bootstrap: each replicate
resamples the runs of every game independently, with replacement.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from twm_fast.envs import canonical_game
from twm_fast.envs.catch import CATCH_OPTIMAL_SCORE, CATCH_RANDOM_SCORE

RANDOM_SCORES: dict[str, float] = {
    "Alien": 227.8, "Amidar": 5.8, "Assault": 222.4, "Asterix": 210.0, "BankHeist": 14.2,
    "BattleZone": 2360.0, "Boxing": 0.1, "Breakout": 1.7, "ChopperCommand": 811.0,
    "CrazyClimber": 10780.5, "DemonAttack": 152.1, "Freeway": 0.0, "Frostbite": 65.2, "Gopher": 257.6,
    "Hero": 1027.0, "Jamesbond": 29.0, "Kangaroo": 52.0, "Krull": 1598.0, "KungFuMaster": 258.5,
    "MsPacman": 307.3, "Pong": -20.7, "PrivateEye": 24.9, "Qbert": 163.9, "RoadRunner": 11.5,
    "Seaquest": 68.4, "UpNDown": 533.4,
    "catch": CATCH_RANDOM_SCORE,
}

HUMAN_SCORES: dict[str, float] = {
    "Alien": 7127.7, "Amidar": 1719.5, "Assault": 742.0, "Asterix": 8503.3, "BankHeist": 753.1,
    "BattleZone": 37187.5, "Boxing": 12.1, "Breakout": 30.5, "ChopperCommand": 7387.8,
    "CrazyClimber": 35829.4, "DemonAttack": 1971.0, "Freeway": 29.6, "Frostbite": 4334.7,
    "Gopher": 2412.5, "Hero": 30826.4, "Jamesbond": 302.8, "Kangaroo": 3035.0, "Krull": 2665.5,
    "KungFuMaster": 22736.3, "MsPacman": 6951.6, "Pong": 14.6, "PrivateEye": 69571.3,
    "Qbert": 13455.0, "RoadRunner": 7845.0, "Seaquest": 42054.7, "UpNDown": 11693.2,
    "catch": CATCH_OPTIMAL_SCORE,
}

# TWM's scores ("Ours" in Table 1 of the paper): the mean over 5 runs of the mean of 100 evaluation
# episodes at the end of training.
PAPER_SCORES: dict[str, float] = {
    "Alien": 674.6, "Amidar": 121.8, "Assault": 682.6, "Asterix": 1116.6, "BankHeist": 466.7,
    "BattleZone": 5068.0, "Boxing": 77.5, "Breakout": 20.0, "ChopperCommand": 1697.4,
    "CrazyClimber": 71820.4, "DemonAttack": 350.2, "Freeway": 24.3, "Frostbite": 1475.58,
    "Gopher": 1674.8, "Hero": 7253.99, "Jamesbond": 362.4, "Kangaroo": 1240.0, "Krull": 6349.2,
    "KungFuMaster": 24554.6, "MsPacman": 1588.4, "Pong": 18.8, "PrivateEye": 86.6, "Qbert": 3330.9,
    "RoadRunner": 9109.0, "Seaquest": 774.4, "UpNDown": 15981.7,
}

# TWM's aggregates of human-normalised scores in Table 1. Mean and median follow from PAPER_SCORES
# (tests check it); IQM and optimality gap need the per-run scores, which the paper does not list.
PAPER_AGGREGATES: dict[str, float] = {"mean": 0.956, "median": 0.505, "iqm": 0.459, "optimality_gap": 0.513}


class AggregateScore(NamedTuple):
    """A point estimate with its 95% stratified-bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random): 0 is the random policy, 1.0 is human level.

    game: any spelling ``canonical_game`` accepts ("Pong", "ms_pacman", "catch").
    """
    name = canonical_game(game)
    if name not in RANDOM_SCORES:
        raise ValueError(f"no random and human reference scores for {name!r}; "
                         f"known: {', '.join(RANDOM_SCORES)}")
    random, human = RANDOM_SCORES[name], HUMAN_SCORES[name]
    return (score - random) / (human - random)


def _aggregates(scores: np.ndarray) -> np.ndarray:
    """The four aggregates of each (runs, games) slice of scores: (..., runs, games) -> (..., 4)."""
    per_game_mean = scores.mean(axis=-2)                                # (..., games)
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)     # (..., runs * games)
    cut = int(0.25 * flat.shape[-1])  # what scipy.stats.trim_mean(x, 0.25) cuts from each end
    return np.stack([
        per_game_mean.mean(axis=-1),
        np.median(per_game_mean, axis=-1),
        flat[..., cut:flat.shape[-1] - cut].mean(axis=-1),
        np.maximum(0.0, 1.0 - scores).mean(axis=(-2, -1)),
    ], axis=-1)


def aggregate_scores(hns: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, AggregateScore]:
    """Mean, median, IQM and optimality gap of human-normalised scores, with 95% CIs.

    hns: (runs, games) human-normalised scores (a 1-D array is one run).
    reps: bootstrap replicates; each resamples, for every game independently, ``runs`` runs with
        replacement (stratified bootstrap). The CI is the 2.5 and 97.5 percentiles of the replicates.
    Returns {"mean", "median", "iqm", "optimality_gap"} -> AggregateScore(value, ci_low, ci_high).
    """
    hns = np.atleast_2d(np.asarray(hns, dtype=np.float64))
    runs, games = hns.shape
    rng = np.random.default_rng(seed)
    run_index = rng.integers(runs, size=(reps, runs, games))
    replicates = hns[run_index, np.arange(games)]                      # (reps, runs, games)
    point = _aggregates(hns)                                           # (4,)
    low, high = np.percentile(_aggregates(replicates), [2.5, 97.5], axis=0)  # (4,) each
    names = ("mean", "median", "iqm", "optimality_gap")
    return {name: AggregateScore(float(point[i]), float(low[i]), float(high[i]))
            for i, name in enumerate(names)}
