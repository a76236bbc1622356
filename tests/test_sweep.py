"""`python -m twm_fast.sweep`: tiny Catch runs on embedded Ray on the CPU, then the report over them."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from twm_fast.sweep import RunSpec, parse_games, parse_seeds, progress_line, run_state, train_command

# Catch shrunk to seconds per run: 40 prefill steps, 160 collected, 10 training steps, 1-episode evaluations.
TINY = ["env_steps=200", "prefill_steps=40", "pretrain_budget=1000", "total_budget=3880", "imagine_batch_size=16",
        "eval_every=40", "eval_episodes=1", "final_eval_episodes=1", "checkpoint_every=20",
        "pretrain_obs_batch_size=64"]
# Embedded Ray kept small on the 2-core CI machine: 2 CPUs, a small object store, no dashboard.
RAY = ["--cpus", "2", "--object-store-mb", "80", "--status-every", "5"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def command(*args, module="twm_fast.sweep"):
    return [sys.executable, "-m", module, *args]


def run(*args, module="twm_fast.sweep", check=True):
    proc = subprocess.run(command(*args, module=module), capture_output=True, text=True, timeout=600,
                          cwd=tempfile.gettempdir(), env=ENV, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_sweep_killed_resumes_then_skips_and_reports(tmp_path):
    pytest.importorskip("ray")
    sweep = tmp_path / "sweep"
    args = ["--games", "catch", "--seeds", "2", "--preset", "quick", "--out", str(sweep), *RAY, *TINY]
    runs = [sweep / "catch" / f"seed{seed}" for seed in (0, 1)]

    # 1. Killed mid-sweep (SIGTERM, as a scheduler would) once both runs have a checkpoint.
    first = subprocess.Popen(command(*args), cwd=tempfile.gettempdir(), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not all(run_state(r) == "resumable" for r in runs):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 130 and "0 done, 0 failed, 2 stopped, 0 skipped" in stderr, stderr
    assert all(run_state(r) == "resumable" for r in runs)
    assert all("interrupted: saved" in r.with_suffix(".log").read_text() for r in runs)

    # 2. The same command continues both runs from their checkpoints.
    second = run(*args)
    assert "2 runs (1 games x 2 seeds), 0 finished (skipped), 2 to run" in second.stderr
    assert "summary: 2 done, 0 failed, 0 stopped, 0 skipped" in second.stderr, second.stderr
    for seed, r in enumerate(runs):
        scores = json.loads((r / "scores.json").read_text())
        assert scores["seed"] == seed and scores["env_steps"] == 200 and scores["train_steps"] == 10
        assert "resuming at" in r.with_suffix(".log").read_text()
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["games"] == ["catch"] and manifest["seeds"] == [0, 1] and manifest["overrides"] == TINY

    # 3. A third call has nothing left to do (and starts no Ray).
    third = run(*args)
    assert "2 finished (skipped), 0 to run" in third.stderr and "0 done, 0 failed, 0 stopped, 2 skipped" in third.stderr

    report = run(str(sweep), "--out", str(tmp_path / "report"), "--reps", "100", module="twm_fast.report")
    assert "| catch | 2 | " in report.stdout and "Missing" not in report.stdout
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "learning_curves.png").is_file()


def test_sweep_starts_anew_a_run_killed_before_its_first_checkpoint(tmp_path):
    run_dir = tmp_path / "sweep" / "catch" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    spec = RunSpec("catch", 0, str(run_dir))
    command = train_command(spec, "quick", TINY)
    assert "--out" in command and "--resume" not in command
    assert not run_dir.exists() and list(run_dir.parent.glob("seed0.incomplete-*/config.json")), "kept aside"


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


def test_progress_line_shows_phase_steps_eval_and_eta(tmp_path):
    run_dir = tmp_path / "catch" / "seed0"
    run_dir.mkdir(parents=True)
    spec = RunSpec("catch", 0, str(run_dir))
    first_seen = {}
    assert "starting" in progress_line(spec, 1000, first_seen)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"env_steps": 120, "time": 1.0}) + "\n")
    assert "prefill" in progress_line(spec, 1000, first_seen) and "120/1,000" in progress_line(spec, 1000, first_seen)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"env_steps": 200, "time": 2.0, "phase": "main"}) + "\n")
    (run_dir / "eval.jsonl").write_text(json.dumps({"env_steps": 200, "mean": 1.5}) + "\n")
    line = progress_line(spec, 1000, first_seen)
    assert "main" in line and "eval 1.50" in line and "ETA -" in line
    first_seen["catch/seed0"] = (time.time() - 10.0, 100)     # 100 steps in 10 s: 800 left take 80 s
    assert "ETA 0:01:20" in progress_line(spec, 1000, first_seen)
