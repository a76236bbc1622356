"""The discount-threshold reset of an imagination step (SPEC 5.3) in plain PyTorch: the twin of the
fused Triton kernel."""
from __future__ import annotations

import torch


def discount_reset_ref(
    discount_logit: torch.Tensor,
    prev_done: torch.Tensor,
    cumulative: torch.Tensor,
    next_z: torch.Tensor,
    restart_z: torch.Tensor,
    restart_index: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tail of one imagined step: the predicted discount, the step's weight, and the restart of
    the rollouts whose cumulative discount fell below the threshold.

    Args:
        discount_logit: (M,) the discount head's logits for step t.
        prev_done: (M,) bool, the rollout was restarted after step t-1 (z_t is a new start).
        cumulative: (M,) the cumulative predicted discount before step t.
        next_z: (M, Z) the sampled z_{t+1}.
        restart_z: (P, Z) the pool of restart latents; restart_index: (M,) int64 rows of it.
        threshold: a rollout whose cumulative discount drops below it counts as done.
    Returns:
        discount (M,) g_t = clip(sigmoid(logit), 0, 1); weight (M,) the cumulative discount of
        step t, restarting at 1 after a reset (DreamerV2-style weights); cumulative (M,) after
        step t; done (M,) bool; z (M, Z) z_{t+1}, a restart latent where done. All fp32 but done.
    """
    discount = torch.sigmoid(discount_logit.float()).clamp(0.0, 1.0)
    weight = torch.where(prev_done, torch.ones_like(cumulative), cumulative)
    cumulative = weight * discount
    done = cumulative < threshold
    z = torch.where(done[:, None], restart_z[restart_index], next_z)
    return discount, weight, cumulative, done, z
