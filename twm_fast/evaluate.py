"""Evaluation with the protocol of SPEC 1 and 7, and the `python -m twm_fast.evaluate` command.

Evaluation envs have no no-op starts and no episodic lives (an episode ends at game over), their
own seeds, and the agent acts on the mode of z with actions sampled from the actor. Episodes are
assigned to a few envs stepped in lockstep (one batched forward pass per step); each env plays a
fixed share of the episodes, so short episodes are not over-represented.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from twm_fast.envs import make_env
from twm_fast.metrics import progress

# Parallel eval envs: enough to batch the forward pass, few enough to keep memory small.
MAX_EVAL_ENVS = 8


def reference_scores(game: str) -> tuple[float | None, float | None]:
    """(random, human) scores of a game for normalisation; Catch uses random and perfect play."""
    from twm_fast.envs.scores import HUMAN_SCORES, RANDOM_SCORES
    return RANDOM_SCORES.get(game), HUMAN_SCORES.get(game)


def evaluate(agent, config, episodes: int, seed: int, show_progress: bool = False) -> dict:
    """Play `episodes` evaluation episodes; returns raw returns, their mean and the normalised score."""
    from twm_fast.envs.scores import human_normalized_score

    num_envs = max(1, min(episodes, MAX_EVAL_ENVS))
    envs = [make_env(config.game, seed=seed + 7919 * i, train=False, config=config) for i in range(num_envs)]
    quota = [episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)]
    obs = [env.reset()[0] for env in envs]
    running = np.zeros(num_envs)
    returns: list[float] = []
    active = [q > 0 for q in quota]
    bar = progress(episodes, "evaluate", unit="episode") if show_progress else None
    device = agent.device
    while any(active):
        idx = [i for i in range(num_envs) if active[i]]
        batch = torch.as_tensor(np.stack([obs[i] for i in idx]), device=device)
        actions = agent.act(batch).cpu().numpy()
        for i, action in zip(idx, actions):
            obs[i], reward, terminated, truncated, _ = envs[i].step(int(action))
            running[i] += reward
            if terminated or truncated:
                returns.append(float(running[i]))
                running[i] = 0.0
                quota[i] -= 1
                if bar is not None:
                    bar.update(1)
                if quota[i] == 0:
                    active[i] = False
                else:
                    obs[i] = envs[i].reset()[0]
    for env in envs:
        env.close()
    if bar is not None:
        bar.close()
    mean = float(np.mean(returns))
    random_score, human_score = reference_scores(config.game)
    return {
        "episodes": len(returns), "returns": returns, "mean": mean, "std": float(np.std(returns)),
        "random_score": random_score, "human_score": human_score,
        "human_normalized": human_normalized_score(config.game, mean) if random_score is not None else None,
    }


def load_agent(checkpoint: str, device: str = "auto"):
    """Rebuild the agent of a checkpoint (a .pt file or a run directory)."""
    from twm_fast.agent.agent import Agent
    from twm_fast.checkpoint import load_checkpoint
    from twm_fast.config import Config
    from twm_fast.train import resolve_device

    payload = load_checkpoint(checkpoint)
    config = Config.from_dict(payload["config"])
    dev = resolve_device(device)
    agent = Agent(config, payload["num_actions"]).to(dev)
    agent.load_state_dict(payload["agent"])
    return agent, config, payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twm_fast.evaluate",
                                     description="Score a saved TWM agent with the evaluation protocol.")
    parser.add_argument("checkpoint", help="a checkpoint .pt file or a run directory")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes (default 100)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, help="also write the result as JSON to this file")
    parser.add_argument("--video", default=None, metavar="DIR",
                        help="also write videos of a few evaluation episodes (real frames beside their "
                             "reconstruction) into DIR")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    try:
        agent, config, payload = load_agent(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = evaluate(agent, config, args.episodes, args.seed, show_progress=True)
    result["checkpoint"] = str(payload["path"])
    result["game"] = config.game
    norm = result["human_normalized"]
    print(f"{config.game}: mean return {result['mean']:.2f} +- {result['std']:.2f} over {result['episodes']} "
          f"episodes" + (f", human-normalised {norm:.3f}" if norm is not None else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.video:
        from twm_fast.video import VIDEO_EPISODES, record_episodes
        paths = record_episodes(agent, config, Path(args.video), episodes=min(VIDEO_EPISODES, args.episodes),
                                seed=args.seed, show_progress=True)
        print(f"videos: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
