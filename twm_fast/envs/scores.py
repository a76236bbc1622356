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

Games with unequal numbers of runs (a sweep with a missing seed) are not truncated to the smallest
count: each game keeps all its runs, and the bootstrap resamples each game's own n_g runs. Mean,
median, the performance profile and the probability of improvement average each game's runs first,
so every game weighs the same; IQM and optimality gap are over all runs x games scores, so a game
with more runs contributes more of them (as in rliable's definition over a runs x games array).
With equal counts every number equals rliable's (``tests/test_scores.py``), and
``twm_fast.report`` then computes them with rliable itself.
"""
from __future__ import annotations

from collections.abc import Sequence
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

# TWM's final score of each of its 5 runs per game, as the authors published them beside their code
# (results/scores.json of github.com/jrobine/twm). Their means are PAPER_SCORES; their IQM and
# optimality gap are Table 1's (tests check both). The report's probability of improvement and its
# TWM aggregates over a subset of games come from these.
PUBLISHED_RUN_SCORES: dict[str, tuple[float, ...]] = {
    "Alien": (840.0, 895.0, 528.5, 531.8, 577.9), "Amidar": (70.71, 154.49, 122.82, 169.0, 91.89),
    "Assault": (746.02, 546.84, 743.07, 617.82, 759.06), "Asterix": (1243.5, 971.5, 1140.5, 1172.0, 1055.5),
    "BankHeist": (143.6, 172.8, 869.7, 954.9, 192.7), "BattleZone": (2410.0, 4550.0, 2680.0, 5170.0, 10530.0),
    "Boxing": (85.52, 86.73, 75.47, 58.96, 80.88), "Breakout": (11.9, 23.35, 20.55, 18.4, 25.78),
    "ChopperCommand": (1870.0, 1776.0, 1648.0, 2102.0, 1091.0),
    "CrazyClimber": (80992.0, 91266.0, 77313.0, 39302.0, 70229.0),
    "DemonAttack": (290.65, 396.6, 235.15, 376.0, 452.7), "Freeway": (29.2, 29.92, 31.12, 31.14, 0.0),
    "Frostbite": (256.9, 269.9, 2218.7, 1474.4, 3158.0), "Gopher": (1399.8, 1060.8, 2707.6, 2245.4, 960.6),
    "Hero": (4364.55, 7500.65, 5615.4, 11753.65, 7035.7), "Jamesbond": (373.5, 240.5, 407.5, 415.5, 375.0),
    "Kangaroo": (1130.0, 1584.0, 600.0, 848.0, 2038.0), "Krull": (7223.2, 5881.0, 5295.2, 9349.1, 3997.4),
    "KungFuMaster": (24402.0, 12082.0, 30385.0, 25710.0, 30194.0),
    "MsPacman": (1602.6, 1479.6, 1839.1, 1266.9, 1754.0), "Pong": (19.75, 13.09, 19.12, 21.0, 21.0),
    "PrivateEye": (100.0, 100.0, 100.0, 100.0, 33.0), "Qbert": (3482.0, 3919.25, 634.0, 4356.5, 4262.5),
    "RoadRunner": (6450.0, 4776.0, 15629.0, 4146.0, 14544.0), "Seaquest": (803.8, 725.4, 878.2, 670.6, 793.8),
    "UpNDown": (4761.8, 6872.0, 3860.2, 54676.1, 9738.6),
}

AGGREGATE_NAMES = ("mean", "median", "iqm", "optimality_gap")


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


def per_game_runs(scores) -> list[np.ndarray]:
    """Per game, its runs' scores: from a (runs, games) array (1-D: one run) or a list of sequences."""
    if isinstance(scores, np.ndarray) or not isinstance(scores, Sequence) or not len(scores) or \
            np.isscalar(scores[0]):
        array = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        return [array[:, g] for g in range(array.shape[1])]
    runs = [np.asarray(game, dtype=np.float64).ravel() for game in scores]
    if any(len(r) == 0 for r in runs):
        raise ValueError("every game needs at least one run's score")
    return runs


def _padded(runs: list[np.ndarray]) -> np.ndarray:
    """(max_runs, games) with NaN below each game's runs."""
    out = np.full((max(len(r) for r in runs), len(runs)), np.nan)
    for g, r in enumerate(runs):
        out[:len(r), g] = r
    return out


def stratified_resample(runs: list[np.ndarray], reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, max_runs, games) bootstrap replicates: game g's n_g runs drawn with replacement, NaN-padded."""
    padded = _padded(runs)                                             # (R, G)
    counts = np.array([len(r) for r in runs])                          # (G,)
    rows = (rng.random((reps, *padded.shape)) * counts).astype(np.int64)  # (reps, R, G), row < n_g
    replicates = padded[rows, np.arange(len(runs))]
    replicates[:, np.arange(padded.shape[0])[:, None] >= counts] = np.nan
    return replicates


def _aggregates(scores: np.ndarray, total: int) -> np.ndarray:
    """The four aggregates of each (runs, games) slice, NaN where a game has fewer runs:
    (..., runs, games) -> (..., 4). total: the number of scores (non-NaN entries) of a slice."""
    per_game_mean = np.nanmean(scores, axis=-2)                        # (..., games)
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)   # (..., runs * games), NaN last
    cut = int(0.25 * total)  # what scipy.stats.trim_mean(x, 0.25) cuts from each end
    return np.stack([
        per_game_mean.mean(axis=-1),
        np.median(per_game_mean, axis=-1),
        flat[..., cut:total - cut].mean(axis=-1),
        np.nanmean(np.maximum(0.0, 1.0 - scores), axis=(-2, -1)),
    ], axis=-1)


def aggregate_scores(hns, reps: int = 2000, seed: int = 0) -> dict[str, AggregateScore]:
    """Mean, median, IQM and optimality gap of human-normalised scores, with 95% CIs.

    hns: (runs, games) human-normalised scores (a 1-D array is one run), or per game a sequence of
        its runs' scores (games may have different numbers of runs; see the module docstring).
    reps: bootstrap replicates; each resamples, for every game independently, its runs with
        replacement (stratified bootstrap). The CI is the 2.5 and 97.5 percentiles of the replicates.
    Returns {"mean", "median", "iqm", "optimality_gap"} -> AggregateScore(value, ci_low, ci_high).
    """
    runs = per_game_runs(hns)
    total = sum(len(r) for r in runs)
    point = _aggregates(_padded(runs), total)                                         # (4,)
    replicates = stratified_resample(runs, reps, np.random.default_rng(seed))
    low, high = np.percentile(_aggregates(replicates, total), [2.5, 97.5], axis=0)   # (4,) each
    return {name: AggregateScore(float(point[i]), float(low[i]), float(high[i]))
            for i, name in enumerate(AGGREGATE_NAMES)}


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 per game, averaged over games: (..., Rx, G), (..., Ry, G) -> (...)."""
    pairs = x[..., :, None, :] - y[..., None, :, :]                    # (..., Rx, Ry, G), NaN for padding
    wins = np.where(np.isnan(pairs), np.nan, (pairs > 0) + 0.5 * (pairs == 0))
    return np.nanmean(wins, axis=(-3, -2)).mean(axis=-1)


def probability_of_improvement(x, y, reps: int = 2000, seed: int = 0) -> AggregateScore:
    """P(X > Y): the chance that a run of X beats a run of Y on a random game (Agarwal et al. 2021:
    the Mann-Whitney U statistic per game over n_x * n_y, averaged over games), with its 95% CI.

    x, y: scores of the two algorithms in the forms ``aggregate_scores`` takes, on the same games in
        the same order; raw or normalised scores give the same result. The bootstrap resamples each
        algorithm's runs of each game independently.
    """
    x_runs, y_runs = per_game_runs(x), per_game_runs(y)
    if len(x_runs) != len(y_runs):
        raise ValueError(f"x has {len(x_runs)} games and y {len(y_runs)}; both need the same games")
    rng = np.random.default_rng(seed)
    point = float(_improvement(_padded(x_runs), _padded(y_runs)))
    replicates = _improvement(stratified_resample(x_runs, reps, rng), stratified_resample(y_runs, reps, rng))
    low, high = np.percentile(replicates, [2.5, 97.5])
    return AggregateScore(point, float(low), float(high))


def performance_profile(hns, taus: np.ndarray, reps: int = 2000, seed: int = 0):
    """The fraction of runs whose human-normalised score exceeds each tau (each game weighted
    equally), with 95% CIs: returns (values, low, high), each of the shape of ``taus``."""
    runs = per_game_runs(hns)
    taus = np.asarray(taus, dtype=np.float64)

    def profile(scores: np.ndarray) -> np.ndarray:                 # (..., R, G) -> (..., T)
        above = np.where(np.isnan(scores[..., None]), np.nan, scores[..., None] > taus)
        return np.nanmean(above, axis=-3).mean(axis=-2)

    values = profile(_padded(runs))
    low, high = np.percentile(profile(stratified_resample(runs, reps, np.random.default_rng(seed))),
                              [2.5, 97.5], axis=0)
    return values, low, high
