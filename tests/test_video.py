"""Evaluation videos: real frames beside the world model's reconstruction, as GIF and MP4."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from twm_fast.envs import make_env
from twm_fast.evaluate import load_agent
from twm_fast.testing import tiny_catch_checkpoint
from twm_fast.video import CAPTION, GAP, SCALE, frames_to_uint8, save_video, side_by_side


def upscaled(frame):
    return np.repeat(np.repeat(frame, SCALE, axis=0), SCALE, axis=1)


def halves(image):
    pixels = np.asarray(image.convert("L"))
    side = 64 * SCALE
    assert pixels.shape == (side + CAPTION, 2 * side + GAP)
    return pixels[:side, :side], pixels[:side, side + GAP:]


def test_side_by_side_puts_real_left_and_reconstruction_right():
    real = np.random.randint(0, 256, (64, 64), dtype=np.uint8)
    recon = np.random.randint(0, 256, (64, 64), dtype=np.uint8)
    left, right = halves(side_by_side(real, recon, "step 0"))
    assert np.array_equal(left, upscaled(real)) and np.array_equal(right, upscaled(recon))


def test_gif_and_mp4_hold_every_frame(tmp_path):
    pytest.importorskip("cv2")
    import cv2

    frames = [side_by_side(np.full((64, 64), 20 * i, np.uint8), np.zeros((64, 64), np.uint8), f"{i}")
              for i in range(7)]
    gif = Image.open(save_video(frames, tmp_path / "v.gif", fps=5))
    assert gif.n_frames == 7 and gif.info["duration"] == 200
    capture = cv2.VideoCapture(str(save_video(frames, tmp_path / "v.mp4", fps=5)))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 7 and capture.get(cv2.CAP_PROP_FPS) == 5
    with pytest.raises(ValueError, match="gif or .mp4"):
        save_video(frames, tmp_path / "v.avi", fps=5)


def test_evaluate_cli_writes_videos_of_real_frames_and_their_reconstructions(tmp_path):
    checkpoint = tiny_catch_checkpoint(tmp_path / "run", steps=60, updates=1)
    videos = tmp_path / "videos"
    proc = subprocess.run([sys.executable, "-m", "twm_fast.evaluate", str(checkpoint), "--episodes", "1",
                           "--seed", "3", "--video", str(videos)], check=False, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "videos:" in proc.stdout
    gif = Image.open(videos / "episode_000.gif")
    assert (videos / "episode_000.mp4").is_file()
    # Catch's evaluation episode is 5 balls, 39 steps: 40 distinct frames (the held last one merges).
    assert gif.n_frames == 40
    agent, config, _ = load_agent(str(checkpoint), "cpu")
    obs, _ = make_env("catch", seed=3, train=False, config=config).reset()
    with torch.no_grad():
        z = agent.obs_model.sample(agent.obs_model.encode(torch.as_tensor(obs[None])), "argmax")[0]
        recon = frames_to_uint8(agent.obs_model.decode(z))[0, -1]
    left, right = halves(gif)
    assert np.array_equal(left, upscaled(obs[-1])) and np.array_equal(right, upscaled(recon))


def test_an_atari_video_is_cut_at_max_steps(tmp_path):
    pytest.importorskip("ale_py")
    from twm_fast.agent.agent import Agent
    from twm_fast.testing import tiny_config
    from twm_fast.video import record_episodes

    config = tiny_config(game="Pong")
    paths = record_episodes(Agent(config, 6), config, tmp_path, episodes=1, seed=0, max_steps=5)
    gif = Image.open(tmp_path / "episode_000.gif")
    assert tmp_path / "episode_000.gif" in paths and gif.n_frames == 6  # 5 steps and the final frame
    assert gif.info["duration"] == 70  # real time: 15 steps per second, in whole 10 ms
