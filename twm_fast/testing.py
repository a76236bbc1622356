"""Small configurations and inputs for tests and benchmarks (importable from any test module)."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from twm_fast.config import Config, make_config


# Overrides of the quick preset for a whole run in well under a minute on a CPU (Catch): 200 prefill
# steps, 200 collected, 40 training steps, an evaluation every 100 env steps.
TINY_RUN = ["env_steps=400", "prefill_steps=200", "pretrain_budget=3000", "total_budget=14520",
            "imagine_batch_size=16", "eval_every=100", "eval_episodes=2", "final_eval_episodes=2",
            "checkpoint_every=100", "pretrain_obs_batch_size=64"]


def tiny_config(**overrides) -> Config:
    """A model small enough for unit tests on a CPU, same structure as the paper's."""
    base = dict(z_categoricals=4, z_categories=5, obs_channels=4, obs_hidden_dims=(16,), dyn_embed_dim=16,
                dyn_num_layers=2, dyn_num_heads=2, dyn_head_dim=8, dyn_feedforward_dim=32, dyn_z_head_dims=(16,),
                dyn_reward_head_dims=(8,), dyn_discount_head_dims=(8,), actor_hidden_dims=(16,),
                critic_hidden_dims=(16,), memory_length=3, wm_batch_size=4, wm_sequence_length=4,
                imagine_batch_size=8, imagine_horizon=5, prefill_steps=100, env_steps=200,
                pretrain_budget=10_000)  # a few hundred updates per phase on 100 prefill steps, not millions
    base.update(overrides)
    return make_config("paper", **base)


def random_z(batch: int, steps: int, config: Config) -> torch.Tensor:
    """Random one-hot latents (batch, steps, z_dim)."""
    idx = torch.randint(0, config.z_categories, (batch, steps, config.z_categoricals))
    return F.one_hot(idx, config.z_categories).float().flatten(2)


def random_batch(config: Config, num_actions: int = 3) -> dict[str, torch.Tensor]:
    """A random replay batch as the trainer reads it: obs (B, L+2, 4, 64, 64) uint8 [context, window,
    next]; actions, rewards, terminated, truncated (B, L+1) [context, window]."""
    B, L = config.wm_batch_size, config.wm_sequence_length
    return {"obs": torch.randint(0, 256, (B, L + 2, 4, 64, 64), dtype=torch.uint8),
            "actions": torch.randint(0, num_actions, (B, L + 1)),
            "rewards": torch.randn(B, L + 1).tanh(),
            "terminated": torch.rand(B, L + 1) < 0.1,
            "truncated": torch.rand(B, L + 1) < 0.05}


def assert_fp32_close_or_within_bf16_bound(name: str, fast: torch.Tensor, ref_lowp: torch.Tensor,
                                           ref_fp32: torch.Tensor, dtype: torch.dtype, fp32_tol: float = 1e-4):
    """The kernels' precision rule (issue 4): in fp32 the fast result is within fp32_tol (relative to
    the largest magnitude) of the reference; in a low precision its error against the fp32 reference
    is at most twice that of the same computation in plain PyTorch at that precision (ref_lowp)."""
    error = (fast.float() - ref_fp32.float()).abs().max().item()
    if dtype == torch.float32:
        limit = fp32_tol * max(ref_fp32.abs().max().item(), 1.0)
        assert error <= limit, f"{name}: fp32 error {error} > {limit}"
    else:
        assert_within_twice_the_reference_error(name, fast, ref_lowp, ref_fp32, str(dtype))


def assert_within_twice_the_reference_error(name: str, fast: torch.Tensor, ref_lowp: torch.Tensor,
                                            ref_fp32: torch.Tensor, numerics: str):
    """The rule for reduced precision (bf16 storage, or TF32 products): the fast error against the IEEE
    fp32 reference is at most twice that of the plain-PyTorch computation in the same numerics."""
    error = (fast.float() - ref_fp32.float()).abs().max().item()
    bound = 2 * (ref_lowp.float() - ref_fp32.float()).abs().max().item()
    assert error <= bound, f"{name}: {numerics} kernel error {error} > 2 x {numerics} reference error {bound / 2}"


@contextlib.contextmanager
def matmul_precision(name: str):
    """config.matmul_precision's setting ("high" = TF32, "highest" = IEEE) within the block."""
    from twm_fast.precision import apply_matmul_precision

    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    apply_matmul_precision(name)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def compiled_only():
    """pytest mark: skip a GPU test when the kernels would run in the interpreter (tests/conftest.py
    turns it on unless TRITON_INTERPRET=0 is set; it is read when a kernel module is imported)."""
    import pytest

    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return pytest.mark.skipif(interpreted and torch.cuda.is_available(), reason="run with TRITON_INTERPRET=0")


def kernel_devices() -> list:
    """pytest params of a kernel test's device: the CPU through the Triton interpreter (CI), and a
    compiled GPU run (marked `gpu`)."""
    import pytest

    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return [
        pytest.param("cpu", marks=pytest.mark.skipif(not interpreted, reason="CPU tensors need the interpreter")),
        pytest.param("cuda", marks=[pytest.mark.gpu, compiled_only()]),
    ]


def tiny_catch_checkpoint(directory, *, steps: int = 200, updates: int = 10, seed: int = 0, **overrides):
    """Save `<directory>/final.pt` (and its replay): an agent with the quick preset's model on Catch after
    `updates` training steps on `steps` steps of random play (overrides: config fields). Seconds on a
    CPU; the tests of the dream, the play page and the evaluation videos load it as they would a real
    run's checkpoint."""
    import math
    from pathlib import Path

    from twm_fast.agent.agent import Agent
    from twm_fast.checkpoint import save_checkpoint
    from twm_fast.envs import make_env
    from twm_fast.replay import make_replay

    config = make_config("quick", seed=seed, env_steps=steps, prefill_steps=steps - 1,  # a valid run's config
                         **overrides)
    env = make_env("catch", seed=seed, train=True, config=config)
    replay = make_replay(config.replay_backend, capacity=steps, temperature=config.replay_temperature, seed=seed)
    obs, _ = env.reset(seed=seed)
    replay.add_first(obs)
    for _ in range(steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
        replay.add(action, math.tanh(reward), terminated, truncated, obs)
    torch.manual_seed(seed)
    agent = Agent(config, env.num_actions)
    length = config.wm_sequence_length
    for _ in range(updates):
        batch = replay.read_windows(replay.sample_starts(config.wm_batch_size, length), length)
        restart_obs = replay.read_obs(replay.random_obs_indices(config.imagine_batch_size))
        agent.train_step({k: torch.as_tensor(v) for k, v in batch.items()}, torch.as_tensor(restart_obs))
    return save_checkpoint(Path(directory), "final", agent=agent, replay=replay, config=config,
                           counters={"phase": "done", "env_steps": replay.total_steps})
