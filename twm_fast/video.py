"""Videos of evaluation episodes: the real frames next to the world model's reconstruction of them.

``record_episodes`` plays evaluation episodes with the protocol of SPEC 1 and 7 (no no-op starts, no
episodic lives, actions sampled from the actor on the mode of z) and writes one video per episode:
each frame is the newest real frame beside the decoder's reconstruction of the mode of z (what the
agent's encoding keeps of it), upscaled by nearest neighbour, over a caption with the step, the action,
the reward and the return. A GIF always (Pillow); an MP4 as well where OpenCV is installed (the atari
extra; MPEG-4 Part 2, which VLC, ffmpeg-based players and most desktop players show, browsers often not).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SCALE = 4               # 64 px frames are shown at 256 px
GAP = 4                 # pixels between the two frames
CAPTION = 18            # pixels of caption under the frames
# `python -m twm_fast.evaluate --video DIR` records this many episodes (fewer with fewer --episodes).
VIDEO_EPISODES = 3
# A video stops after this many agent steps (3:20 at Atari's 15 steps per second): an evaluation
# episode can last 27,000 steps, far longer than anyone watches, and a GIF grows with every frame.
MAX_VIDEO_STEPS = 3_000
# Steps per second a person watches at: an Atari agent step is 4 frames at 60 Hz (real time); Catch's
# ball falls a whole cell per step, too fast to follow at 15.
ATARI_FPS = 15
CATCH_FPS = 5


def viewing_fps(game: str) -> int:
    """Agent steps per second at which a game looks right to a person."""
    return CATCH_FPS if game == "catch" else ATARI_FPS


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Decoded frames, floats with 0..1 for black..white, -> uint8 0..255 on the host (any shape)."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def side_by_side(real: np.ndarray, reconstruction: np.ndarray, caption: str) -> Image.Image:
    """One video frame: real and reconstructed (64, 64) uint8 frames, upscaled, with the caption under
    the real one and a label under the reconstruction."""
    side = 64 * SCALE
    image = Image.new("L", (2 * side + GAP, side + CAPTION), color=40)
    draw = ImageDraw.Draw(image)
    for i, (frame, text) in enumerate(((real, caption), (reconstruction, "reconstruction (mode of z)"))):
        image.paste(Image.fromarray(frame).resize((side, side), Image.NEAREST), (i * (side + GAP), 0))
        draw.text((i * (side + GAP) + 3, side + 3), text, fill=255)
    return image


def save_video(frames: list[Image.Image], path: Path, fps: float) -> Path:
    """Write frames as a GIF (".gif", Pillow) or an MP4 (".mp4", OpenCV's mp4v codec)."""
    if path.suffix == ".gif":
        # GIF frame durations are in whole 10 ms units.
        duration = max(20, round(100 / fps) * 10)
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0)
    elif path.suffix == ".mp4":
        import cv2

        width, height = frames[0].size
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), isColor=False)
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {path} (no mp4v encoder in this build)")
        for frame in frames:
            writer.write(np.asarray(frame))
        writer.release()
    else:
        raise ValueError(f"unknown video format {path.suffix!r}: use .gif or .mp4")
    return path


def _mp4_available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def record_episodes(agent, config, directory: Path, *, episodes: int, seed: int,
                    max_steps: int = MAX_VIDEO_STEPS, show_progress: bool = False) -> list[Path]:
    """Play `episodes` evaluation episodes and write `episode_<i>.gif` (and `.mp4`) into `directory`.

    The episodes are played here, with their own env seeded with `seed`, not taken from a scoring
    run: a video is for looking at what the agent and its world model do. Returns the written paths.
    """
    from twm_fast.envs import make_env
    from twm_fast.metrics import progress

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    om = agent.obs_model.eval()
    env = make_env(config.game, seed=seed, train=False, config=config)
    meanings = env.action_meanings
    fps = viewing_fps(config.game)
    suffixes = [".gif", ".mp4"] if _mp4_available() else [".gif"]
    written = []
    bar = progress(episodes, "video", unit="episode") if show_progress else None
    for episode in range(episodes):
        obs, _ = env.reset()
        frames, episode_return, done, step = [], 0.0, False, 0
        while True:
            z = om.sample(om.encode(torch.as_tensor(obs[None], device=agent.device)), "argmax")[0]
            reconstruction = frames_to_uint8(om.decode(z))[0, -1]
            if done or step == max_steps:
                end = "game over" if done else f"cut at {max_steps} steps"
                frames.append(side_by_side(obs[-1], reconstruction, f"step {step}  return {episode_return:g}  {end}"))
                break
            action = int(agent.actor_critic.act(z)[0])
            next_obs, reward, terminated, truncated, _ = env.step(action)
            episode_return += reward
            frames.append(side_by_side(obs[-1], reconstruction,
                                       f"step {step}  {meanings[action]}  r {reward:+g}  return {episode_return:g}"))
            obs, done, step = next_obs, terminated or truncated, step + 1
        # Hold the last frame for a second, so that the end can be seen before the GIF loops.
        frames += [frames[-1]] * fps
        written += [save_video(frames, directory / f"episode_{episode:03d}{suffix}", fps) for suffix in suffixes]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    env.close()
    return written
