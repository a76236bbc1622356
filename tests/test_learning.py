"""The quick preset learns the built-in Catch game on a CPU (SPEC-faithful agent, small sizes)."""
import json
import subprocess
import sys
import time

import pytest

from twm_fast.envs.catch import CATCH_RANDOM_SCORE


@pytest.mark.slow
def test_quick_preset_learns_catch(tmp_path):
    run = tmp_path / "run"
    started = time.perf_counter()
    # cwd outside the source tree: `python -m` must import the installed package.
    proc = subprocess.run([sys.executable, "-m", "twm_fast.train", "--preset", "quick", "--out", str(run),
                           "--no-progress"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    minutes = (time.perf_counter() - started) / 60
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads((run / "scores.json").read_text())
    print(f"quick preset on Catch: final mean return {scores['final_mean_return']:.2f} over "
          f"{scores['final_episodes']} episodes in {minutes:.1f} min (random policy {CATCH_RANDOM_SCORE})")
    # Far above random: -2.6 is the random policy, 5.0 catches every ball.
    assert scores["final_mean_return"] > CATCH_RANDOM_SCORE + 3.0, scores
