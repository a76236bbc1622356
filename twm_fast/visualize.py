"""Pictures of a run: observations next to their reconstructions, imagined rollouts with their
predicted rewards and discounts, and the evaluation curve."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from twm_fast.imagination.rollout import ImaginationStart

_SCALE = 2          # 64 px frames are drawn at 128 px
_CAPTION = 22       # pixels under a frame for its caption


def _frame(x: torch.Tensor) -> np.ndarray:
    """The newest frame of a stack, (4, 64, 64) float in [0, 1] or uint8 -> (64, 64) uint8."""
    x = x[-1].detach().float().cpu()
    if x.max() > 1.5:
        x = x / 255.0
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _grid(rows: list[list[np.ndarray]], captions: list[list[str]] | None = None) -> Image.Image:
    side = 64 * _SCALE
    cell_h = side + (_CAPTION if captions else 0)
    ncols = max(len(r) for r in rows)
    image = Image.new("L", (ncols * (side + 2), len(rows) * (cell_h + 2)), color=40)
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            tile = Image.fromarray(frame).resize((side, side), Image.NEAREST)
            x, y = j * (side + 2), i * (cell_h + 2)
            image.paste(tile, (x, y))
            if captions:
                draw.text((x + 3, y + side + 3), captions[i][j], fill=255)
    return image


@torch.no_grad()
def save_reconstructions(agent, obs: torch.Tensor, path: Path) -> Path:
    """Top row: observations (newest frame); bottom row: decoded mode of z. obs (N, 4, 64, 64) uint8."""
    om = agent.obs_model.eval()
    z = om.sample(om.encode(obs), "argmax")[0]
    recon = om.decode(z)
    image = _grid([[_frame(o) for o in obs], [_frame(r) for r in recon]])
    image.save(path)
    return path


@torch.no_grad()
def save_imagined_rollouts(agent, start: ImaginationStart, restart_z: torch.Tensor, path: Path) -> Path:
    """One row per trajectory: decoded imagined frames, captioned with predicted reward r and
    discount g (and 'reset' where the rollout restarted). Also writes a GIF next to the PNG."""
    rollout = agent.imagine(start, restart_z)
    om = agent.obs_model.eval()
    n, steps = rollout.z.shape[:2]
    frames = om.decode(rollout.z.flatten(0, 1)).view(n, steps, *om.decode(rollout.z[:1, 0]).shape[1:])
    rows, captions = [], []
    for i in range(n):
        rows.append([_frame(frames[i, t]) for t in range(steps)])
        caps = ["start"]
        for t in range(steps - 1):
            cap = f"r{rollout.rewards[i, t]:+.2f} g{rollout.discounts[i, t]:.2f}"
            caps.append(cap + (" R" if rollout.resets[i, t] else ""))
        captions.append(caps)
    _grid(rows, captions).save(path)
    gif = [_grid([[rows[i][t] for i in range(n)]], [[captions[i][t] for i in range(n)]]) for t in range(steps)]
    gif[0].save(path.with_suffix(".gif"), save_all=True, append_images=gif[1:], duration=250, loop=0)
    return path


def save_eval_curve(evals: list[dict], path: Path, title: str) -> Path | None:
    """Mean evaluation return (with min-max band) against env steps, from eval records."""
    if not evals:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["env_steps"] for e in evals]
    means = [e["mean"] for e in evals]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.fill_between(steps, [min(e["returns"]) for e in evals], [max(e["returns"]) for e in evals], alpha=0.2)
    ax.plot(steps, means, marker="o")
    if evals[-1].get("random_score") is not None:
        ax.axhline(evals[-1]["random_score"], color="gray", ls="--", label="random policy")
        ax.legend(loc="lower right")
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
