"""The actor-critic (SPEC 4): a policy and a value function on z alone."""
from __future__ import annotations

import math

import torch
from torch import nn

from twm_fast import ops
from twm_fast.config import Config
from twm_fast.models.nets import MLP, adam, optimizer_step


class ActorCritic(nn.Module):
    def __init__(self, config: Config, num_actions: int):
        super().__init__()
        self.config = config
        self.num_actions = num_actions
        z_dim = config.z_categoricals * config.z_categories
        self.actor = MLP(z_dim, config.actor_hidden_dims, num_actions, init="orthogonal")
        self.critic = MLP(z_dim, config.critic_hidden_dims, 1, init="orthogonal")
        self.actor_optimizer = adam(self.actor.parameters(), config.actor_lr, config.ac_eps, config.ac_weight_decay)
        self.critic_optimizer = adam(self.critic.parameters(), config.critic_lr, config.ac_eps,
                                     config.ac_weight_decay)

    def value(self, z: torch.Tensor) -> torch.Tensor:
        return self.critic(z).squeeze(-1)

    @torch.no_grad()
    def act(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample actions at temperature 1 (collection, imagination, evaluation). z (N, z_dim) -> (N,).

        noise: (N, 1, A) uniform noise in (0, 1), or None to draw it here (imagination draws all its
        steps' noise at once)."""
        # fp32 logits and noise whatever the actor's dtype: bf16 uniforms would skew the Gumbel draws.
        logits = self.actor(z)[:, None].float()                                    # (N, 1, A)
        noise = torch.rand_like(logits) if noise is None else noise
        onehot, _, _, _ = ops.categorical_sample(logits, noise, "sample")
        return onehot[:, 0].argmax(-1)

    @torch.no_grad()
    def targets(self, z, rewards, discounts, resets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GAE(lambda) advantages and returns with predicted discounts, zeroed where the rollout was
        reset after the step (no bootstrapping across a reset).

        z (N, H+1, z_dim); rewards, discounts (N, H); resets (N, H) bool.
        Returns values (N, H+1), advantages (N, H), returns (N, H)."""
        values = self.value(z)
        stopped = discounts * (~resets).float()
        advantages = ops.gae(rewards, stopped, values, self.config.gae_lambda)
        return values, advantages, advantages + values[:, :-1]

    def update(self, z, actions, rewards, discounts, resets, weights,
               valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Critic step, then actor step, on imagined trajectories (SPEC 4).

        z (N, H+1, z_dim) (the last state only bootstraps); actions, rewards, discounts (N, H);
        resets (N, H) bool; weights (N, H) cumulative predicted discounts. valid: a 0-dim bool
        tensor; False skips both steps (twm_fast.models.nets.optimizer_step)."""
        c = self.config
        _, advantages, returns = self.targets(z, rewards, discounts, resets)
        z = z[:, :-1]
        values = self.value(z)
        critic_loss = -(weights * _normal_log_prob(values, returns)).mean()
        critic_norm, critic_skipped = optimizer_step(self.critic_optimizer, critic_loss, c.ac_grad_clip, valid)

        log_probs = torch.log_softmax(self.actor(z), dim=-1)                      # (N, H, A)
        action_log_prob = log_probs.gather(-1, actions[..., None]).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        reinforce = (weights * action_log_prob * advantages).mean()
        normalized_entropy = (weights * entropy).mean() / math.log(self.num_actions)
        # Eq. 5: the entropy penalty only acts when the policy is nearly deterministic.
        actor_loss = -reinforce + c.actor_entropy_coef * torch.relu(c.actor_entropy_threshold - normalized_entropy)
        actor_norm, actor_skipped = optimizer_step(self.actor_optimizer, actor_loss, c.ac_grad_clip, valid)
        return {
            "ac/critic_loss": critic_loss.detach(), "ac/actor_loss": actor_loss.detach(),
            "ac/value": values.detach().mean(), "ac/return": returns.mean(),
            "ac/advantage": advantages.mean(), "ac/entropy": normalized_entropy.detach(),
            "ac/critic_grad_norm": critic_norm, "ac/actor_grad_norm": actor_norm,
            "ac/resets": resets.float().sum(),
            "ac/critic_skipped": critic_skipped, "ac/actor_skipped": actor_skipped,
        }

    def pretrain_update(self, z, rewards, discounts, dones) -> dict[str, torch.Tensor]:
        """Pretraining on real data (SPEC 7): critic regression to GAE returns and actor entropy
        maximisation (fine: the data came from the uniform random policy).

        z (N, H+1, z_dim); rewards, discounts, dones (N, H)."""
        c = self.config
        _, _, returns = self.targets(z, rewards, discounts, dones)
        values = self.value(z[:, :-1])
        critic_loss = -_normal_log_prob(values, returns).mean()
        log_probs = torch.log_softmax(self.actor(z), dim=-1)
        normalized_entropy = -(log_probs.exp() * log_probs).sum(-1).mean() / math.log(self.num_actions)
        actor_loss = -c.actor_entropy_coef * normalized_entropy
        actor_norm, actor_skipped = optimizer_step(self.actor_optimizer, actor_loss, c.ac_grad_clip)
        critic_norm, critic_skipped = optimizer_step(self.critic_optimizer, critic_loss, c.ac_grad_clip)
        return {"ac/critic_loss": critic_loss.detach(), "ac/actor_loss": actor_loss.detach(),
                "ac/entropy": normalized_entropy.detach(), "ac/critic_grad_norm": critic_norm,
                "ac/actor_grad_norm": actor_norm, "ac/critic_skipped": critic_skipped,
                "ac/actor_skipped": actor_skipped}


def _normal_log_prob(mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, 1), as torch.distributions.Normal(mean, 1).log_prob(x)."""
    return -0.5 * (x - mean).pow(2) - 0.5 * math.log(2 * math.pi)
