"""Put finished runs next to the paper's Table 1: `python -m twm_fast.report DIR [DIR ...] [--out REPORT_DIR]`.

DIR is a sweep directory (`python -m twm_fast.sweep --out DIR`: runs in DIR/<game>/seed<k>/) or a
run directory (`python -m twm_fast.train --out DIR`). The report, printed as Markdown and with
`--out` written to REPORT_DIR/report.md with its PNG figures, holds:

- per game: the runs' final scores (scores.json), their mean raw and human-normalised, TWM's
  published score beside it; games and seeds without a finished run are listed as missing;
- the aggregates of SPEC 8 (mean, median, IQM, optimality gap) of the human-normalised scores with
  95% stratified-bootstrap CIs, computed by rliable where it is installed and every game has the
  same number of runs (else by ``twm_fast.envs.scores``, which gives the same numbers and keeps
  every run when the counts differ), beside TWM's from its published per-run scores on the same
  games, and the probability that a twm-fast run beats a published TWM run on a random game;
- figures: the aggregates' interval estimates, the performance profile, and per game the
  learning curves of every run (eval.jsonl).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twm_fast.cli import Once, Parser, path_text, refuse, ruled
from twm_fast.config import field_rule
from twm_fast.envs import canonical_game
from twm_fast.envs.scores import (
    AGGREGATE_NAMES,
    PAPER_AGGREGATES,
    PAPER_SCORES,
    PUBLISHED_RUN_SCORES,
    RANDOM_SCORES,
    AggregateScore,
    aggregate_scores,
    human_normalized_score,
    performance_profile,
    probability_of_improvement,
)
from twm_fast.preflight import check_output_dir
from twm_fast.validation import Integer

SWEEP_MANIFEST = "sweep.json"   # written by twm_fast.sweep: the games and seeds a sweep asked for
PROFILE_TAUS = np.linspace(0.0, 2.0, 81)  # human-normalised thresholds of the performance profile
# --reps: rliable's bootstrap holds (reps, runs, games) draws in memory; a million is minutes already.
BOOTSTRAP_REPS = Integer(1, 1_000_000)


@dataclass
class Run:
    path: Path
    game: str
    seed: int | None
    final: float | None                              # final mean return; None while unfinished
    evals: list[dict] = field(default_factory=list)  # eval.jsonl records


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; the file is damaged (a finished run can be scored "
                         f"again with python -m twm_fast.evaluate {path.parent})") from None


def _read_evals(path: Path) -> list[dict]:
    """eval.jsonl's records; a line cut short by an interrupted write is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "env_steps" in record and "mean" in record:
            records.append(record)
    return records


def read_run(path: Path) -> Run:
    """A run directory: its game and seed (config.json), final score (scores.json) and evaluations."""
    scores = _read_json(path / "scores.json") if (path / "scores.json").is_file() else None
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    if not isinstance(config, dict) or (scores is not None and not isinstance(scores, dict)):
        raise ValueError(f"{path}: config.json or scores.json is not a JSON object; is this a twm-fast run?")
    try:
        game = canonical_game((scores or config)["game"])
        final = None if scores is None else float(scores["final_mean_return"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: scores.json or config.json lacks a valid game or final_mean_return ({exc})") \
            from None
    seed = (scores or {}).get("seed", config.get("seed"))
    return Run(path, game, None if seed is None else int(seed), final, _read_evals(path / "eval.jsonl"))


def _is_run(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "scores.json").is_file()


def find_runs(paths: list[str]) -> tuple[list[Run], set[tuple[str, int]]]:
    """The runs under `paths` (run or sweep directories) and the (game, seed) pairs that sweeps
    asked for. Raises ValueError, naming the path, for a missing path or one without runs."""
    runs: list[Run] = []
    expected: set[tuple[str, int]] = set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory; pass sweep directories (python -m twm_fast.sweep "
                             "--out DIR) or run directories (python -m twm_fast.train --out DIR)")
        if _is_run(path):
            runs.append(read_run(path))
            continue
        manifest = path / SWEEP_MANIFEST
        if manifest.is_file():
            sweep = _read_json(manifest)
            try:
                expected |= {(canonical_game(g), int(s)) for g in sweep["games"] for s in sweep["seeds"]}
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{manifest} is not a sweep manifest (games and seeds)") from None
        found = sorted({p for pattern in ("*", "*/*") for p in path.glob(pattern) if p.is_dir() and _is_run(p)})
        if not found and not expected:
            raise ValueError(f"{path} holds no runs (no config.json or scores.json in it or two levels below); "
                             "pass sweep or run directories")
        runs += [read_run(p) for p in found]
    return runs, expected


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(score: AggregateScore) -> str:
    return f"{score.value:.3f} [{score.ci_low:.3f}, {score.ci_high:.3f}]"


def rliable_aggregates(hns: np.ndarray, reps: int, seed: int) -> dict[str, AggregateScore] | None:
    """The four aggregates by rliable, for a (runs, games) array; None where rliable is not installed."""
    try:
        from rliable import library, metrics
    except ImportError:
        return None
    funcs = (metrics.aggregate_mean, metrics.aggregate_median, metrics.aggregate_iqm,
             metrics.aggregate_optimality_gap)
    # rliable's StratifiedBootstrap draws its indices from numpy's global generator, whatever
    # random_state says: seed that one for a reproducible report, and put it back after.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        point, ci = library.get_interval_estimates({"x": hns}, lambda x: np.array([f(x) for f in funcs]), reps=reps)
    finally:
        np.random.set_state(state)
    return {name: AggregateScore(float(point["x"][i]), float(ci["x"][0, i]), float(ci["x"][1, i]))
            for i, name in enumerate(AGGREGATE_NAMES)}


def aggregates_with_method(per_game: list[list[float]], reps: int, seed: int) -> tuple[dict, str]:
    """Aggregates of per-game run scores, and a sentence saying how they were computed."""
    counts = {len(runs) for runs in per_game}
    if len(counts) == 1:
        result = rliable_aggregates(np.array(per_game).T, reps, seed)
        if result is not None:
            return result, f"rliable, {reps} stratified-bootstrap replicates"
        reason = "rliable is not installed (pip install \"twm-fast[sweep]\")"
    else:
        reason = (f"the games have unequal numbers of runs ({min(counts)} to {max(counts)}): every run is kept, "
                  "each game's runs are resampled among themselves; mean, median and the profile weigh games "
                  "equally, IQM and optimality gap weigh every run")
    return aggregate_scores(per_game, reps, seed), f"twm_fast.envs.scores, {reps} replicates; {reason}"


@dataclass
class Summary:
    runs: list[Run]
    missing: list[str]                       # games / seeds without a finished run, as text
    expected_games: list[str]                # the games sweeps asked for
    by_game: dict[str, list[Run]]            # finished runs per game
    atari: list[str]                         # the games with Table 1 scores, sorted
    ours: dict | None = None
    ours_method: str = ""
    published: dict | None = None
    improvement: AggregateScore | None = None


def summarise(runs: list[Run], expected: set[tuple[str, int]], reps: int = 2000, seed: int = 0) -> Summary:
    by_game: dict[str, list[Run]] = {}
    for run in runs:
        if run.final is not None:
            by_game.setdefault(run.game, []).append(run)
    missing = [f"{run.game} seed {run.seed} (unfinished: python -m twm_fast.train --resume {run.path})"
               for run in runs if run.final is None]
    have = {(run.game, run.seed) for run in runs}
    missing += [f"{game} seed {s} (not started)" for game, s in sorted(expected - have)]
    atari = sorted(g for g in by_game if g in PAPER_SCORES)
    summary = Summary(runs, missing, sorted({g for g, _ in expected}), by_game, atari)
    if atari:
        ours = [[human_normalized_score(g, r.final) for r in by_game[g]] for g in atari]
        published = [[human_normalized_score(g, s) for s in PUBLISHED_RUN_SCORES[g]] for g in atari]
        summary.ours, summary.ours_method = aggregates_with_method(ours, reps, seed)
        summary.published, _ = aggregates_with_method(published, reps, seed)
        summary.improvement = probability_of_improvement(ours, published, reps, seed)
    return summary


def markdown(s: Summary, figures: list[str] = ()) -> str:
    games = sorted(set(s.by_game) | {run.game for run in s.runs} | set(s.expected_games))
    lines = ["# twm-fast report", "",
             f"{sum(len(r) for r in s.by_game.values())} finished run(s) of {len(s.by_game)} game(s)."]
    if s.missing:
        lines += ["", f"Missing ({len(s.missing)}): " + "; ".join(s.missing) + "."]
    lines += ["", "## Per game", "",
              "| game | runs | score (mean over runs) | std | human-normalised | TWM (paper) | paper, normalised | "
              "runs' scores |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for game in games:
        finished = s.by_game.get(game, [])
        paper = PAPER_SCORES.get(game)
        paper_text = "- | -" if paper is None else f"{paper:g} | {human_normalized_score(game, paper):.3f}"
        if not finished:
            lines.append(f"| {game} | 0 | missing | - | - | {paper_text} | - |")
            continue
        scores = [r.final for r in finished]
        mean = float(np.mean(scores))
        per_run = ", ".join(f"{x:.1f}" for x in scores)
        normalised = _fmt(human_normalized_score(game, mean)) if game in RANDOM_SCORES else "-"
        lines.append(f"| {game} | {len(scores)} | {mean:.1f} | {np.std(scores):.1f} | {normalised} | "
                     f"{paper_text} | {per_run} |")
    if s.ours is not None:
        subset = len(s.atari) < len(PAPER_SCORES)
        lines += ["", "## Aggregates", "",
                  f"Human-normalised scores over {len(s.atari)} Atari game(s), 95% stratified-bootstrap CIs "
                  f"({s.ours_method}). TWM's own column aggregates its published 5 runs per game on the same "
                  "games.", "",
                  "| metric | twm-fast | TWM (published runs, same games) | TWM (paper, Table 1, 26 games) |",
                  "| --- | --- | --- | --- |"]
        for name in AGGREGATE_NAMES:
            lines.append(f"| {name} | {_ci(s.ours[name])} | {_ci(s.published[name])} | "
                         f"{PAPER_AGGREGATES[name]:.3f} |")
        lines += ["", f"Probability of improvement, P(twm-fast > TWM): {_ci(s.improvement)} (the chance that a "
                  "twm-fast run beats a published TWM run on a random one of these games; 0.5 is a tie)."]
        if subset:
            lines.append(f"\n(Table 1's aggregates are over all {len(PAPER_SCORES)} games; compare the middle "
                         "column.)")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines)


# ---- Figures ----------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_aggregates(s: Summary, path: Path) -> Path:
    """Interval estimates of the four aggregates, twm-fast beside TWM's published runs (rliable's layout)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.2))
    for ax, name in zip(axes, AGGREGATE_NAMES):
        for row, (label, agg, color) in enumerate((("twm-fast", s.ours, "tab:blue"),
                                                   ("TWM (published)", s.published, "tab:gray"))):
            score = agg[name]
            ax.barh(row, score.ci_high - score.ci_low, left=score.ci_low, height=0.6, color=color, alpha=0.75)
            ax.vlines(score.value, row - 0.3, row + 0.3, color="black", lw=1.5)
        ax.set_yticks([0, 1], ["twm-fast", "TWM (published)"] if ax is axes[0] else ["", ""])
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("human-normalised score")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Aggregates over {len(s.atari)} game(s), 95% CIs", y=1.08)
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return path


def plot_profile(s: Summary, path: Path, reps: int, seed: int) -> Path:
    """Performance profile: the fraction of runs above each human-normalised score, with 95% bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ours = [[human_normalized_score(g, r.final) for r in s.by_game[g]] for g in s.atari]
    published = [[human_normalized_score(g, x) for x in PUBLISHED_RUN_SCORES[g]] for g in s.atari]
    for label, per_game, color in (("twm-fast", ours, "tab:blue"), ("TWM (published)", published, "tab:gray")):
        values, low, high = performance_profile(per_game, PROFILE_TAUS, reps, seed)
        ax.plot(PROFILE_TAUS, values, color=color, label=label)
        ax.fill_between(PROFILE_TAUS, low, high, color=color, alpha=0.2)
    ax.set_xlabel(r"human-normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs with score > $\tau$")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(s: Summary, path: Path) -> Path | None:
    """Per game, the mean evaluation return of every run against env steps (eval.jsonl)."""
    games = sorted({run.game for run in s.runs if run.evals})
    if not games:
        return None
    plt = _pyplot()
    cols = min(len(games), 4)
    rows = -(-len(games) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        for run in (r for r in s.runs if r.game == game and r.evals):
            steps = [e["env_steps"] for e in run.evals]
            ax.plot(steps, [e["mean"] for e in run.evals], marker=".", lw=1,
                    label=f"seed {run.seed}" + ("" if run.final is not None else " (unfinished)"))
        if game in PAPER_SCORES:
            ax.axhline(PAPER_SCORES[game], color="gray", ls="--", lw=1, label="TWM (paper)")
        ax.set_title(game)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(games):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(s: Summary, out: Path, reps: int, seed: int) -> Path:
    """REPORT_DIR/report.md with its figures beside it; returns the Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if s.ours is not None:
        figures.append(plot_aggregates(s, out / "aggregates.png").name)
        figures.append(plot_profile(s, out / "performance_profile.png", reps, seed).name)
    curves = plot_learning_curves(s, out / "learning_curves.png")
    if curves is not None:
        figures.append(curves.name)
    path = out / "report.md"
    path.write_text(markdown(s, figures) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m twm_fast.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=path_text, metavar="DIR", help="sweep directories or run directories")
    parser.add_argument("--out", action=Once, type=path_text, default=None, metavar="REPORT_DIR",
                        help="write report.md and its PNG figures to this directory")
    parser.add_argument("--reps", action=Once, type=ruled(BOOTSTRAP_REPS), default=2000,
                        help="bootstrap replicates (default 2000)")
    parser.add_argument("--seed", action=Once, type=ruled(field_rule("seed")), default=0,
                        help="seed of the bootstrap")
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            check_output_dir(Path(args.out), "--out", new=False)  # before reading any run
        summary = summarise(*find_runs(args.dirs), reps=args.reps, seed=args.seed)
    except (OSError, ValueError) as exc:
        return refuse(exc)
    print(markdown(summary))
    if args.out:
        path = write_report(summary, Path(args.out), args.reps, args.seed)
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
