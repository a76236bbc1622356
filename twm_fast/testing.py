"""Small configurations and inputs for tests and benchmarks (importable from any test module)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from twm_fast.config import Config, make_config


def tiny_config(**overrides) -> Config:
    """A model small enough for unit tests on a CPU, same structure as the paper's."""
    base = dict(z_categoricals=4, z_categories=5, obs_channels=4, obs_hidden_dims=(16,), dyn_embed_dim=16,
                dyn_num_layers=2, dyn_num_heads=2, dyn_head_dim=8, dyn_feedforward_dim=32, dyn_z_head_dims=(16,),
                dyn_reward_head_dims=(8,), dyn_discount_head_dims=(8,), actor_hidden_dims=(16,),
                critic_hidden_dims=(16,), memory_length=3, wm_batch_size=4, wm_sequence_length=4,
                imagine_batch_size=8, imagine_horizon=5, prefill_steps=100, env_steps=200)
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
