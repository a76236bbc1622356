"""`python -m twm_fast.report` puts finished runs next to the paper's Table 1."""
import json

import pytest

from twm_fast.envs.scores import HUMAN_SCORES, RANDOM_SCORES
from twm_fast.report import main


def write_run(path, game, score):
    path.mkdir(parents=True)
    (path / "scores.json").write_text(json.dumps({"game": game, "final_mean_return": score}))
    return str(path)


def test_report_table_and_aggregates(tmp_path, capsys):
    # Pong at exactly human level in both runs, Boxing at the random level: hns 1.0 and 0.0.
    runs = [write_run(tmp_path / f"pong{i}", "Pong", HUMAN_SCORES["Pong"]) for i in range(2)]
    runs += [write_run(tmp_path / f"boxing{i}", "Boxing", RANDOM_SCORES["Boxing"]) for i in range(2)]
    runs.append(write_run(tmp_path / "catch", "catch", 5.0))
    out = tmp_path / "table.md"
    assert main([*runs, "--out", str(out), "--reps", "200"]) == 0
    text = capsys.readouterr().out
    assert "| Pong | 2 | 14.6 | 1.000 |" in text
    assert "| Boxing | 2 | 0.1 | 0.000 |" in text
    assert "| catch | 1 | 5.0 | 1.000 | - | - |" in text
    assert "| mean | 0.500 | [0.500, 0.500] | 0.956 |" in text
    assert "| optimality_gap | 0.500 |" in text
    assert out.read_text().strip() == text.strip()


def test_report_names_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "running").mkdir()
    assert main([str(tmp_path / "running")]) == 2
    assert "has not finished" in capsys.readouterr().err


@pytest.mark.parametrize("score", [-21.0, 21.0])
def test_report_single_game(tmp_path, capsys, score):
    assert main([write_run(tmp_path / "r", "Pong", score), "--reps", "50"]) == 0
    assert "Aggregates over 1 Atari game(s), 1 run(s) each" in capsys.readouterr().out
