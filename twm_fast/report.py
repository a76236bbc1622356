"""Put finished runs next to the paper's Table 1: `python -m twm_fast.report RUN_DIR [RUN_DIR ...]`.

Reads each run's scores.json (the final evaluation), groups the runs by game, and prints a Markdown
table: per game the mean raw score over runs, its human-normalised score and TWM's published score;
then the aggregates of SPEC 8 (mean, median, IQM, optimality gap) with 95% stratified-bootstrap
confidence intervals over the Atari games, next to the paper's.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from twm_fast.envs.scores import PAPER_AGGREGATES, PAPER_SCORES, aggregate_scores, human_normalized_score


def load_final_scores(run_dirs: list[str]) -> dict[str, list[float]]:
    """game -> final mean returns of its runs. Raises FileNotFoundError naming an unfinished run."""
    by_game: dict[str, list[float]] = defaultdict(list)
    for run in map(Path, run_dirs):
        path = run / "scores.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run} has no scores.json: the run has not finished (continue it with "
                                    f"python -m twm_fast.train --resume {run}) or it is not a run directory")
        scores = json.loads(path.read_text())
        by_game[scores["game"]].append(float(scores["final_mean_return"]))
    return dict(by_game)


def report(by_game: dict[str, list[float]], reps: int = 2000, seed: int = 0) -> str:
    lines = ["| game | runs | score (mean over runs) | human-normalised | TWM (paper) | paper, normalised |",
             "| --- | --- | --- | --- | --- | --- |"]
    for game in sorted(by_game):
        scores = by_game[game]
        mean = float(np.mean(scores))
        paper = PAPER_SCORES.get(game)
        paper_text = "- | -" if paper is None else f"{paper:g} | {human_normalized_score(game, paper):.3f}"
        normalized = human_normalized_score(game, mean)
        lines.append(f"| {game} | {len(scores)} | {mean:.1f} | {normalized:.3f} | {paper_text} |")
    atari = sorted(g for g in by_game if g in PAPER_SCORES)
    if atari:
        # A (runs, games) array needs the same number of runs per game: keep the first n of each.
        runs = min(len(by_game[g]) for g in atari)
        hns = np.array([[human_normalized_score(g, by_game[g][r]) for g in atari] for r in range(runs)])
        aggregates = aggregate_scores(hns, reps=reps, seed=seed)
        lines += ["", f"Aggregates over {len(atari)} Atari game(s), {runs} run(s) each (95% stratified-bootstrap CI):",
                  "", "| metric | twm-fast | 95% CI | TWM (paper) |", "| --- | --- | --- | --- |"]
        for name, value in aggregates.items():
            lines.append(f"| {name} | {value.value:.3f} | [{value.ci_low:.3f}, {value.ci_high:.3f}] | "
                         f"{PAPER_AGGREGATES[name]:.3f} |")
        if len(atari) < len(PAPER_SCORES):
            lines.append(f"\n(The paper's aggregates are over all {len(PAPER_SCORES)} games.)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twm_fast.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories written by python -m twm_fast.train")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default 2000)")
    args = parser.parse_args(argv)
    try:
        text = report(load_final_scores(args.runs), reps=args.reps)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
