"""`python -m twm_fast.sweep`: tiny Catch runs on embedded Ray on the CPU, then the report over them."""
import json
import subprocess
import sys
import tempfile
import time

import pytest

from twm_fast.sweep import parse_games, parse_seeds, run_state

# Catch shrunk to seconds per run: 40 prefill steps, 40 collected, 10 training steps, 1-episode evaluations.
TINY = ["env_steps=80", "prefill_steps=40", "pretrain_budget=1000", "total_budget=3880", "imagine_batch_size=16",
        "eval_every=40", "eval_episodes=1", "final_eval_episodes=1", "checkpoint_every=20",
        "pretrain_obs_batch_size=64"]
# Embedded Ray kept small on the 2-core CI machine: 2 CPUs, a small object store, no dashboard.
RAY = ["--cpus", "2", "--object-store-mb", "80", "--status-every", "5"]


def run(*args, module="twm_fast.sweep", check=True):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          cwd=tempfile.gettempdir(), env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_sweep_resumes_skips_and_reports(tmp_path):
    pytest.importorskip("ray")
    sweep = tmp_path / "sweep"
    # Seed 1 was interrupted mid-run by an earlier sweep: a checkpoint, no scores.json (what a run
    # leaves when it is stopped or gets SIGTERM, tests/test_train_cli.py).
    run("--preset", "quick", "--game", "catch", "--seed", "1", "--out", str(sweep / "catch" / "seed1"),
        "--no-progress", "--stop-after", "50", *TINY, module="twm_fast.train")
    assert run_state(sweep / "catch" / "seed1") == "resumable"

    started = time.monotonic()
    first = run("--games", "catch", "--seeds", "2", "--preset", "quick", "--out", str(sweep), *RAY, *TINY)
    first_s = time.monotonic() - started
    assert "2 runs (1 games x 2 seeds), 0 finished (skipped), 2 to run" in first.stderr
    assert "summary: 2 done, 0 failed, 0 stopped, 0 skipped" in first.stderr, first.stderr
    for seed in (0, 1):
        scores = json.loads((sweep / "catch" / f"seed{seed}" / "scores.json").read_text())
        assert scores["seed"] == seed and scores["env_steps"] == 80 and scores["train_steps"] == 10
    assert "resuming at main, env step 50" in (sweep / "catch" / "seed1.log").read_text()
    assert "--resume" not in (sweep / "catch" / "seed0.log").read_text()
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["games"] == ["catch"] and manifest["seeds"] == [0, 1] and manifest["overrides"] == TINY

    second = run("--games", "catch", "--seeds", "2", "--preset", "quick", "--out", str(sweep), *RAY, *TINY)
    assert "2 finished (skipped), 0 to run" in second.stderr and "0 done, 0 failed, 0 stopped, 2 skipped" in second.stderr

    report = run(str(sweep), "--out", str(tmp_path / "report"), "--reps", "100", module="twm_fast.report")
    assert "| catch | 2 | " in report.stdout and "Missing" not in report.stdout
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "learning_curves.png").is_file()
    print(f"first sweep call {first_s:.0f} s")


def test_sweep_refuses_other_settings_for_the_same_directory(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"games": ["catch"], "seeds": [0], "preset": "quick",
                                                  "overrides": ["eval_episodes=2"]}))
    proc = run("--games", "catch", "--seeds", "1", "--preset", "quick", "--out", str(sweep), "eval_episodes=3",
               check=False)
    assert proc.returncode == 2 and "holds a sweep with overrides" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--games", "Pongg"], "did you mean Pong"),
    (["--games", "catch", "--seeds", "x"], "give a count"),
    (["--games", "catch", "seed=3"], "come from --games and --seeds"),
    (["--games", "catch", "imagine_batch_sise=3"], "did you mean imagine_batch_size"),
])
def test_bad_sweep_arguments_are_one_clear_line(tmp_path, args, message):
    proc = run(*args, "--out", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_game_and_seed_lists():
    assert len(parse_games("atari26")) == 26
    assert parse_games("pong,ms_pacman,Pong") == ["Pong", "MsPacman"]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,4") == [0, 4]
