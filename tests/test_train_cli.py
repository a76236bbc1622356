"""Smoke tests of the real command line, run as subprocesses with a tiny budget (cleanrl's style)."""
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from twm_fast.checkpoint import CheckpointStore, has_checkpoint
from twm_fast.config import Config, make_config
from twm_fast.replay import replay_class
from twm_fast.testing import TINY_RUN as TINY  # Catch with the quick preset shrunk further


def run_cli(*args, module="twm_fast.train", check=True, cwd=None):
    # Run outside the source tree, so that `python -m` imports the installed package (with its
    # compiled replay core and twm_fast.kernels), not the checkout's twm_fast/ directory.
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd or tempfile.gettempdir())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def newest_checkpoint(checkpoint_dir):
    return CheckpointStore(checkpoint_dir).committed()[0]


def visit_total(checkpoint_dir, name, length):
    """Counters, replay and total visit count of checkpoint `name` ("latest": the newest)."""
    if name == "latest":
        name = newest_checkpoint(checkpoint_dir)
    payload = torch.load(checkpoint_dir / f"{name}.pt", weights_only=False)
    config = Config.from_dict(payload["config"])
    replay = replay_class(config.replay_backend).load(str(checkpoint_dir / payload["replay_file"]))
    _, counts = replay.visit_counts(length)
    return payload["counters"], replay, int(counts.sum())


def test_train_stop_resume_evaluate(tmp_path):
    run = tmp_path / "run"
    first = run_cli("--preset", "quick", "--out", str(run), "--no-progress", "--stop-after", "260", *TINY)
    assert "continue with" in first.stderr
    newest = newest_checkpoint(run / "checkpoints")
    for name in ["config.json", "metrics.jsonl", "eval.jsonl", "eval_curve.png", f"checkpoints/{newest}.pt",
                 f"checkpoints/{newest}.replay", f"checkpoints/{newest}.json"]:
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "images").glob("reconstructions_*.png"))
    assert list((run / "images").glob("imagined_*.png")) and list((run / "images").glob("imagined_*.gif"))
    config = json.loads((run / "config.json").read_text())
    assert config["game"] == "catch" and config["env_steps"] == 400
    assert config["matmul_precision"] == "highest"  # "auto" resolved for the CPU, and recorded

    counters, replay, visits = visit_total(run / "checkpoints", "latest", config["wm_sequence_length"])
    assert counters["phase"] == "main" and counters["env_steps"] == 260
    assert replay.total_steps == 260
    assert counters["train_steps"] > 0
    assert visits == config["wm_batch_size"] * counters["train_steps"]
    stopped_train_steps = counters["train_steps"]

    second = run_cli("--resume", str(run), "--no-progress")
    assert "resuming at main, env step 260" in second.stderr
    counters, replay, visits = visit_total(run / "checkpoints", "final", config["wm_sequence_length"])
    assert counters["phase"] == "done" and counters["env_steps"] == 400
    full = make_config("quick", TINY)
    assert counters["train_steps"] == full.num_train_steps == 40
    # Counters continued from the checkpoint: every training step drew one batch of starts.
    assert visits == config["wm_batch_size"] * counters["train_steps"] > config["wm_batch_size"] * stopped_train_steps
    train_records = [r for r in read_jsonl(run / "metrics.jsonl") if "train_steps" in r]
    assert [r["train_steps"] for r in train_records] == sorted(r["train_steps"] for r in train_records)

    scores = json.loads((run / "scores.json").read_text())
    assert scores["final_episodes"] == 2 and scores["env_steps"] == 400
    assert scores["human_normalized"] is not None
    evals = read_jsonl(run / "eval.jsonl")
    assert evals[0]["env_steps"] == 200 and evals[-1]["final"] is True
    assert [e["env_steps"] for e in evals][1:-1] == [300]

    out = tmp_path / "eval.json"
    ev = run_cli(str(run / "checkpoints" / "final.pt"), "--episodes", "3", "--out", str(out),
                 module="twm_fast.evaluate")
    assert "mean return" in ev.stdout
    assert json.loads(out.read_text())["episodes"] == 3


@pytest.mark.parametrize("args,message", [
    (["--game", "Pongg"], "did you mean Pong"),
    (["--preset", "papr"], "unknown preset 'papr'"),
    (["imagine_batch_sise=3"], "did you mean imagine_batch_size"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    (["--device", "tpu"], "'tpu': must be auto, cpu, cuda or cuda:N"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    proc = run_cli("--out", str(tmp_path / "x"), *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_paper_preset_on_cpu_points_to_quick(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU would run the paper preset")
    proc = run_cli("--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "--preset quick" in proc.stderr and "days" in proc.stderr


def test_output_directory_of_another_run_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    proc = run_cli("--preset", "quick", "--out", str(run), check=False)
    assert proc.returncode == 2 and "already holds a twm-fast run" in proc.stderr and "--resume" in proc.stderr


def test_unreadable_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli(str(bad), module="twm_fast.evaluate", check=False)
    assert proc.returncode == 2 and "cannot read checkpoint" in proc.stderr
    proc = run_cli(str(tmp_path / "missing.pt"), module="twm_fast.evaluate", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_stop_during_prefill_and_resume(tmp_path):
    run = tmp_path / "run"
    run_cli("--preset", "quick", "--out", str(run), "--no-progress", "--stop-after", "120", *TINY)
    config = json.loads((run / "config.json").read_text())
    counters, replay, visits = visit_total(run / "checkpoints", "latest", config["wm_sequence_length"])
    assert counters["phase"] == "prefill" and counters["env_steps"] == replay.total_steps == 120
    assert counters["train_steps"] == 0 and visits == 0
    stopped = replay.read_windows([119], 1)
    second = run_cli("--resume", str(run), "--no-progress")
    assert "resuming at prefill, env step 120" in second.stderr
    counters, replay, _ = visit_total(run / "checkpoints", "final", config["wm_sequence_length"])
    assert counters["phase"] == "done" and counters["env_steps"] == replay.total_steps == 400
    assert counters["train_steps"] == 40
    # Catch's state is part of the checkpoint: its episode went on across the stop, with no truncation
    # at the last step before it (an Atari run ends its episode there: tests/test_resume.py).
    window = replay.read_windows([119], 1)
    assert window["truncated"][0, 1] == stopped["truncated"][0, 1]
    assert window["terminated"][0, 1] == stopped["terminated"][0, 1]


def test_resume_rejects_new_settings(tmp_path):
    run = tmp_path / "run"
    run_cli("--preset", "quick", "--out", str(run), "--no-progress", "--stop-after", "50", *TINY)
    proc = run_cli("--resume", str(run), "--seed", "3", check=False)
    assert proc.returncode == 2 and "saved config" in proc.stderr


def test_atari_game_runs_end_to_end(tmp_path):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    run = tmp_path / "pong"
    run_cli("--preset", "quick", "--game", "pong", "--out", str(run), "--no-progress", "time_limit=300",
            "eval_episodes=1", "final_eval_episodes=1", *(o for o in TINY if "eval_episodes" not in o))
    scores = json.loads((run / "scores.json").read_text())
    assert scores["game"] == "Pong" and scores["train_steps"] == 40
    assert scores["random_score"] == -20.7 and scores["human_score"] == 14.6
    assert -21 <= scores["final_mean_return"] <= 21


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "twm_fast.train", "--preset", "quick", "--out", str(run),
                             "--no-progress", *TINY], cwd=tempfile.gettempdir(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    # Wait for the first checkpoint (end of prefill), then stop the run as a scheduler would.
    while not has_checkpoint(run):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted: saved" in stderr and "(on SIGTERM)" in stderr
    counters, replay, _ = visit_total(run / "checkpoints", "latest", 8)
    assert counters["env_steps"] == replay.total_steps
    second = run_cli("--resume", str(run), "--no-progress")
    assert "resuming at" in second.stderr
    counters, replay, _ = visit_total(run / "checkpoints", "final", 8)
    assert counters["phase"] == "done" and counters["env_steps"] == replay.total_steps == 400


def test_bfloat16_run_end_to_end(tmp_path):
    """Both bf16 options through the whole schedule (pretraining, main loop, checkpoints, evaluation)."""
    run = tmp_path / "bf16"
    run_cli("--preset", "quick", "--out", str(run), "--no-progress", "world_model_dtype=bfloat16",
            "imagine_dtype=bfloat16", *TINY)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["train_steps"] == 40 and math.isfinite(scores["final_mean_return"])
    losses = [row["dyn/loss"] for row in read_jsonl(run / "metrics.jsonl") if "dyn/loss" in row]
    assert losses and all(math.isfinite(loss) for loss in losses)
