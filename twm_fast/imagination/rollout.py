"""Batched imagination (SPEC 5.3): M trajectories of H steps in the world model, in lockstep.

A fixed-shape rollout over a batch with all state in tensors: no host sync and no data-dependent
shape inside a step (a rollout whose cumulative discount falls below the threshold is restarted
in place with a `torch.where`, not by indexing), so the same code can be captured in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from twm_fast import ops
from twm_fast.models.actor_critic import ActorCritic
from twm_fast.models.dynamics import DynamicsModel
from twm_fast.models.obs_model import ObservationModel


@dataclass
class ImaginationStart:
    """Pairs of consecutive latents from real data and the step between them.

    z: (M, 2, z_dim) z_k, z_{k+1}; actions, rewards: (M,) a_k, r_k; dones: (M,) bool, the episode
    ended after step k (so z_{k+1} starts a new one)."""

    z: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor


@dataclass
class Rollout:
    """Imagined trajectories: z (M, H+1, z_dim); actions, rewards, discounts, resets, weights
    (M, H). resets[:, t] means the rollout was restarted after step t (z[:, t+1] is a new start);
    weights are the cumulative predicted discounts (1 at the first step and after a restart)."""

    z: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    discounts: torch.Tensor
    resets: torch.Tensor
    weights: torch.Tensor


@torch.no_grad()
def imagine(obs_model: ObservationModel, dynamics: DynamicsModel, actor_critic: ActorCritic,
            start: ImaginationStart, restart_z: torch.Tensor, horizon: int, discount_threshold: float) -> Rollout:
    """Roll the actor out in the world model.

    Prime the transformer with (z_k, a_k), then for each of `horizon` steps: a_t ~ actor(z_t);
    one dynamics step on (r_{t-1}, z_t, a_t); z_{t+1} ~ latent head, r_t = reward mean,
    g_t = clip(sigmoid(discount logit), 0, 1). When a rollout's cumulative discount drops below
    `discount_threshold` it counts as done: z_{t+1} is replaced by a latent of a random replay
    observation (a row of `restart_z`, (P, z_dim)) and the attention mask cuts the history there.
    """
    dynamics.eval()
    # The models may run in bfloat16 (config.imagine_dtype); the rollout's state, the sampling and
    # the outputs stay float32 (the casts are no-ops in float32).
    dtype = dynamics.u_bias.dtype
    num = start.z.shape[0]
    cache = dynamics.new_cache(num)
    dynamics.step_first(cache, start.z[:, 0].to(dtype), start.actions)
    z, prev_reward, prev_done = start.z[:, 1], start.rewards, start.dones
    cumulative = torch.ones(num, device=z.device)
    # The randomness of all steps, drawn at once (three kernels, not three per step).
    action_noise = torch.rand(horizon, num, 1, actor_critic.num_actions, device=z.device)
    latent_noise = torch.rand(horizon, num, obs_model.num_vars, obs_model.num_classes, device=z.device)
    restart_index = torch.randint(restart_z.shape[0], (horizon, num), device=z.device)
    zs, actions, rewards, discounts, resets, weights = [z], [], [], [], [], []
    for t in range(horizon):
        z_in = z.to(dtype)
        action = actor_critic.act(z_in, action_noise[t])
        h = dynamics.step(cache, prev_reward.to(dtype), prev_done, z_in, action)
        preds = dynamics.predict(h)
        next_z = obs_model.sample(preds["z_logits"].float(), "sample", latent_noise[t])[0]
        reward = preds["reward"].float()
        # g_t, the DreamerV2-style weight (the cumulative discount, restarting at 1 after a reset),
        # and the restart of the rollouts whose cumulative discount fell below the threshold.
        discount, weight, cumulative, done, z = ops.discount_reset(
            preds["discount_logit"], prev_done, cumulative, next_z, restart_z, restart_index[t], discount_threshold)
        weights.append(weight)
        zs.append(z)
        actions.append(action)
        rewards.append(reward)
        discounts.append(discount)
        resets.append(done)
        prev_reward, prev_done = reward, done
    stack = lambda xs: torch.stack(xs, dim=1)  # noqa: E731
    return Rollout(stack(zs), stack(actions), stack(rewards), stack(discounts), stack(resets), stack(weights))
