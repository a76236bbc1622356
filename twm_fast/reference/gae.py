"""Generalised advantage estimation (Schulman et al. 2016) with predicted discounts (SPEC 4)."""
from __future__ import annotations

import torch


def gae_ref(rewards: torch.Tensor, discounts: torch.Tensor, values: torch.Tensor, lam: float) -> torch.Tensor:
    """Advantages by the backward recursion A_t = delta_t + discount_t * lam * A_{t+1}.

    Args:
        rewards: (N, H) rewards r_t.
        discounts: (N, H) discounts g_t of the step t -> t+1, already zero where the rollout
            was reset after step t (no bootstrapping across a reset).
        values: (N, H + 1) critic values; the last column bootstraps.
        lam: the GAE lambda (0.95).
    Returns:
        (N, H) advantages; returns are advantages + values[:, :-1].
    """
    deltas = rewards + discounts * values[:, 1:] - values[:, :-1]
    advantages = torch.zeros_like(values)
    for t in reversed(range(rewards.shape[1])):
        advantages[:, t] = deltas[:, t] + discounts[:, t] * lam * advantages[:, t + 1]
    return advantages[:, :-1]
