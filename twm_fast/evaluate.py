"""Evaluation with the protocol of SPEC 1 and 7, and the `python -m twm_fast.evaluate` command.

Evaluation envs have no no-op starts and no episodic lives (an episode ends at game over or at the
time limit), their own seeds, and the agent acts on the mode of z with actions sampled from the
actor. The episodes are shared out over ``config.eval_envs`` envs stepped together (ale-py's vector
env for Atari games, ``twm_fast.envs.vector``), one batched forward pass per step. Each env plays a
fixed quota of episodes and its first episodes count: taking the first N episodes to finish
across all envs would over-represent short episodes (an agent that dies early would look more
typical than it is).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from twm_fast.cli import Once, Parser, describe_error, path_text, refuse, ruled
from twm_fast.config import EVAL_ENV_BACKENDS, field_rule
from twm_fast.envs.vector import EvalEnvs, make_eval_envs
from twm_fast.metrics import progress
from twm_fast.preflight import check_output_dir, check_output_file

# Seeds of the evaluation envs: seed + SEED_STRIDE * i for env i (a prime, so the envs of nearby
# evaluation seeds do not coincide).
SEED_STRIDE = 7919


def reference_scores(game: str) -> tuple[float | None, float | None]:
    """(random, human) scores of a game for normalisation; Catch uses random and perfect play."""
    from twm_fast.envs.scores import HUMAN_SCORES, RANDOM_SCORES
    return RANDOM_SCORES.get(game), HUMAN_SCORES.get(game)


def episode_quotas(episodes: int, num_envs: int) -> list[int]:
    """How many episodes each env plays: ``episodes`` shared out as evenly as possible."""
    return [episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)]


def play_episodes(envs: EvalEnvs, policy: Callable[[np.ndarray], np.ndarray], quotas: list[int],
                  on_episode: Callable[[], None] | None = None) -> list[list[float]]:
    """Play until every env i has finished ``quotas[i]`` episodes; returns each env's episode returns.

    policy: obs uint8 (n, frame_stack, 64, 64) -> actions (n,), called on the envs still playing
        that wait for an action.
    An env that has filled its quota goes on stepping (a vector env steps all its envs) but its
    further episodes are not counted.
    """
    returns: list[list[float]] = [[] for _ in quotas]
    running = np.zeros(envs.num_envs)
    obs = envs.reset()
    playing = np.array([q > 0 for q in quotas])
    ready = np.ones(envs.num_envs, bool)
    while playing.any():
        actions = np.zeros(envs.num_envs, np.int64)   # ignored by envs that are not ready
        acting = np.flatnonzero(playing & ready)
        if acting.size:
            actions[acting] = policy(obs[acting])
        step = envs.step(actions)
        ready = step.ready
        running += step.rewards
        for i in np.flatnonzero(step.stepped & (step.terminated | step.truncated)):
            if playing[i]:
                returns[i].append(float(running[i]))
                playing[i] = len(returns[i]) < quotas[i]
                if on_episode is not None:
                    on_episode()
            running[i] = 0.0
        obs = step.obs
    return returns


def agent_policy(agent) -> Callable[[np.ndarray], np.ndarray]:
    """The agent's acting rule (SPEC 7) as a policy over a batch of numpy observations."""
    def policy(obs: np.ndarray) -> np.ndarray:
        return agent.act(torch.as_tensor(obs, device=agent.device)).cpu().numpy()
    return policy


def evaluate(agent, config, episodes: int, seed: int, show_progress: bool = False) -> dict:
    """Play `episodes` evaluation episodes; returns raw returns, their mean and the normalised score.

    The agent's actions are drawn from torch's generator seeded with `seed`, inside `fork_rng`: an
    evaluation is reproducible, and the caller's random state is as it was (a training run's
    future does not depend on its evaluations, nor on where one was interrupted)."""
    from twm_fast.envs.scores import human_normalized_score

    num_envs = max(1, min(episodes, config.eval_envs))
    envs = make_eval_envs(config.game, [seed + SEED_STRIDE * i for i in range(num_envs)], config,
                          backend=config.eval_env_backend)
    bar = progress(episodes, "evaluate", unit="episode") if show_progress else None
    devices = [agent.device] if agent.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            per_env = play_episodes(envs, agent_policy(agent), episode_quotas(episodes, num_envs),
                                    on_episode=None if bar is None else lambda: bar.update(1))
    finally:
        envs.close()
        if bar is not None:
            bar.close()
    returns = [r for env_returns in per_env for r in env_returns]   # env by env, in episode order
    mean = float(np.mean(returns))
    random_score, human_score = reference_scores(config.game)
    return {
        "episodes": len(returns), "returns": returns, "mean": mean, "std": float(np.std(returns)),
        "num_envs": num_envs, "env_backend": type(envs).__name__,
        "random_score": random_score, "human_score": human_score,
        "human_normalized": human_normalized_score(config.game, mean) if random_score is not None else None,
    }


def load_agent(checkpoint: str, device: str = "auto"):
    """Rebuild the agent of a checkpoint (a .pt file or a run directory)."""
    from twm_fast.agent.agent import Agent
    from twm_fast.checkpoint import load_checkpoint
    from twm_fast.config import Config
    from twm_fast.devices import resolve_device
    from twm_fast.precision import apply_matmul_precision, resolve_matmul_precision

    payload = load_checkpoint(checkpoint)
    try:
        config = Config.from_dict(payload["config"])
        agent = Agent(config, payload["num_actions"])
        agent.load_state_dict(payload["agent"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {payload['path']} does not hold a complete agent ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}); use another checkpoint") from None
    if payload.get("unverified"):  # a copy taken out of its run's checkpoints/ folder, say
        print(f"warning: {payload['unverified']}", file=sys.stderr)
    device = resolve_device(device)
    # The run's precision (saved resolved; a run from before the field has "auto"), on this device.
    config.matmul_precision = resolve_matmul_precision(config.matmul_precision, device)
    apply_matmul_precision(config.matmul_precision)
    return agent.to(device), config, payload


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m twm_fast.evaluate",
                    description="Score a saved TWM agent with the evaluation protocol.")
    parser.add_argument("checkpoint", type=path_text, help="a checkpoint .pt file or a run directory")
    parser.add_argument("--episodes", action=Once, type=ruled(field_rule("final_eval_episodes")), default=100,
                        help="evaluation episodes (default 100)")
    parser.add_argument("--seed", action=Once, type=ruled(field_rule("seed")), default=12345,
                        help="seed of the evaluation envs")
    parser.add_argument("--device", action=Once, type=ruled(field_rule("device")), default="auto",
                        help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--envs", action=Once, type=ruled(field_rule("eval_envs")), default=None,
                        help="envs stepped at once (default: the run's eval_envs, 16)")
    parser.add_argument("--env-backend", action=Once, choices=EVAL_ENV_BACKENDS, default=None,
                        help="vector: ale-py's AtariVectorEnv; single: one env at a time (default: the run's, auto)")
    parser.add_argument("--out", action=Once, type=path_text, default=None,
                        help="also write the result as JSON to this file")
    parser.add_argument("--video", action=Once, type=path_text, default=None, metavar="DIR",
                        help="also write videos of a few evaluation episodes (real frames beside their "
                             "reconstruction) into DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Where the results go is checked before any episode is played.
        if args.out is not None:
            check_output_file(Path(args.out), "--out")
        if args.video is not None:
            check_output_dir(Path(args.video), "--video", new=False)
        agent, config, payload = load_agent(args.checkpoint, args.device)
        if args.envs is not None:
            config.eval_envs = args.envs
        if args.env_backend is not None:
            config.eval_env_backend = args.env_backend
        result = evaluate(agent, config, args.episodes, args.seed, show_progress=True)
    except (OSError, ValueError, ImportError) as exc:
        return refuse(exc)
    result["checkpoint"] = str(payload["path"])
    result["game"] = config.game
    norm = result["human_normalized"]
    print(f"{config.game}: mean return {result['mean']:.2f} +- {result['std']:.2f} over {result['episodes']} "
          f"episodes" + (f", human-normalised {norm:.3f}" if norm is not None else ""))
    if args.out:
        try:  # checked before playing; a disk that filled since is still one line (the result is printed above)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))
        except OSError as exc:
            return refuse(f"cannot write --out {args.out}: {describe_error(exc)}")
    if args.video:
        from twm_fast.video import VIDEO_EPISODES, record_episodes
        paths = record_episodes(agent, config, Path(args.video), episodes=min(VIDEO_EPISODES, args.episodes),
                                seed=args.seed, show_progress=True)
        print(f"videos: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
