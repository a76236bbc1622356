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
