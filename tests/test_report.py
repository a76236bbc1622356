"""`python -m twm_fast.report` puts finished runs next to the paper's Table 1."""
import json

import numpy as np
import pytest

from twm_fast.envs.scores import HUMAN_SCORES, PUBLISHED_RUN_SCORES, RANDOM_SCORES
from twm_fast.report import main


def write_run(path, game, score, seed=0, evals=()):
    """A run directory as twm_fast.train writes it; score None leaves it unfinished."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"game": game, "seed": seed}))
    if score is not None:
        (path / "scores.json").write_text(json.dumps({"game": game, "seed": seed, "final_mean_return": score}))
    with open(path / "eval.jsonl", "w") as f:
        for step, mean in evals:
            f.write(json.dumps({"env_steps": step, "mean": mean}) + "\n")
    return str(path)


def test_report_table_and_aggregates(tmp_path, capsys):
    # Pong at exactly human level in both runs, Boxing at the random level: hns 1.0 and 0.0.
    runs = [write_run(tmp_path / f"pong{i}", "Pong", HUMAN_SCORES["Pong"], seed=i) for i in range(2)]
    runs += [write_run(tmp_path / f"boxing{i}", "Boxing", RANDOM_SCORES["Boxing"], seed=i) for i in range(2)]
    runs.append(write_run(tmp_path / "catch", "catch", 5.0))
    out = tmp_path / "report"
    assert main([*runs, "--out", str(out), "--reps", "200"]) == 0
    text = capsys.readouterr().out
    assert "| Pong | 2 | 14.6 | 0.0 | 1.000 |" in text
    assert "| Boxing | 2 | 0.1 | 0.0 | 0.000 |" in text
    assert "| catch | 1 | 5.0 | 0.0 | 1.000 | - | - |" in text
    assert "| mean | 0.500 [0.500, 0.500] |" in text
    assert "| optimality_gap | 0.500 [0.500, 0.500] |" in text
    assert "Probability of improvement" in text
    report = (out / "report.md").read_text()
    assert report.startswith(text.strip())
    for figure in ("aggregates.png", "performance_profile.png"):
        assert (out / figure).stat().st_size > 1000 and f"]({figure})" in report


def test_report_equals_twm_on_its_published_runs(tmp_path, capsys):
    # Runs with TWM's own published scores: the two columns agree, and the improvement is a tie.
    for game in ("Pong", "Breakout", "Qbert"):
        for seed, score in enumerate(PUBLISHED_RUN_SCORES[game]):
            write_run(tmp_path / game / f"seed{seed}", game, score, seed=seed)
    assert main([str(tmp_path), "--reps", "300"]) == 0
    text = capsys.readouterr().out
    assert "(rliable, 300 stratified-bootstrap replicates)" in text or "rliable is not installed" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| mean ", "| iqm "))]
    assert rows and all(row[1] == row[2] for row in rows)
    assert "P(twm-fast > TWM): 0.500" in text


def test_report_shows_missing_runs_and_keeps_unequal_seed_counts(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"games": ["Pong", "Breakout", "Boxing"], "seeds": [0, 1, 2]}))
    pong = [HUMAN_SCORES["Pong"], RANDOM_SCORES["Pong"], HUMAN_SCORES["Pong"]]   # hns 1, 0, 1
    for seed, score in enumerate(pong):
        write_run(sweep / "Pong" / f"seed{seed}", "Pong", score, seed=seed, evals=[(0, -21.0), (100, score)])
    write_run(sweep / "Breakout" / "seed0", "Breakout", RANDOM_SCORES["Breakout"], seed=0)   # hns 0
    write_run(sweep / "Breakout" / "seed1", "Breakout", None, seed=1, evals=[(0, 1.0)])      # unfinished
    out = tmp_path / "report"
    assert main([str(sweep), "--reps", "200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| Pong | 3 | " in text and "| Breakout | 1 | " in text, "no truncation to the smallest count"
    assert "| Boxing | 0 | missing |" in text
    assert "Breakout seed 1 (unfinished: python -m twm_fast.train --resume" in text
    assert "Breakout seed 2 (not started)" in text and "Boxing seed 0 (not started)" in text
    assert "unequal numbers of runs (1 to 3)" in text
    # Mean over games of each game's mean: (2/3 + 0) / 2. IQM over all 4 scores 0, 0, 1, 1: 0.5.
    assert f"| mean | {(2 / 3) / 2:.3f} " in text
    assert "| iqm | 0.500 " in text
    assert (out / "learning_curves.png").stat().st_size > 1000


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "is not a directory"),
    (lambda d: d.mkdir(), "holds no runs"),
    (lambda d: (d.mkdir(), (d / "scores.json").write_text('{"game": "Pong", "final_')), "cannot read"),
    (lambda d: (d.mkdir(), (d / "scores.json").write_text('{"game": "Pong"}')), "lacks a valid game"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text('[1, 2]')), "not a JSON object"),
])
def test_bad_run_directories_are_one_clear_line(tmp_path, capsys, setup, message):
    setup(tmp_path / "runs")
    assert main([str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unwritable_out_is_refused_before_reading_runs(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main([str(tmp_path / "no-such-runs"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main([str(tmp_path / "no-such-runs"), "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "is a file, so no directory can be made under it" in capsys.readouterr().err
    assert not (tmp_path / "report").exists() and main([str(tmp_path / "no-such-runs"), "--out",
                                                          str(tmp_path / "report")]) == 2
    assert not (tmp_path / "report").exists()  # a refused report makes no directory


def test_eval_log_cut_short_is_read_up_to_the_damage(tmp_path, capsys):
    run = write_run(tmp_path / "run", "Pong", 0.0, evals=[(0, -21.0), (5000, -10.0)])
    with open(tmp_path / "run" / "eval.jsonl", "a") as f:
        f.write('{"env_steps": 10000, "me')
    assert main([run, "--reps", "20", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "learning_curves.png").is_file()
    assert np.isfinite(0.0)
