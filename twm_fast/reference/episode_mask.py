"""The episode-boundary mask of a cached imagination step (SPEC 3) in plain PyTorch: the twin of the
fused Triton kernel."""
from __future__ import annotations

import torch


def episode_mask_ref(
    episode_start: torch.Tensor,
    new_episode: torch.Tensor | None,
    key_token: torch.Tensor,
    in_window: torch.Tensor,
    boundary: int,
    z_pos: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which cached keys each new token of a step may see, and where each sequence's episode starts.

    No token sees a token of an earlier episode; a new episode starts at the step's z token, so the
    tokens before it (the previous step's reward) keep the old start.

    Args:
        episode_start: (B,) int64 absolute index of each sequence's current episode's first token.
        new_episode: (B,) bool, a new episode starts at the z token (None: none does).
        key_token: (S,) int64 absolute token index held by each cache slot (-1 if none).
        in_window: (n, S) bool, the memory window of the n new tokens (episodes aside).
        boundary: the absolute index of the z token (where a new episode starts).
        z_pos: the z token's position among the n new tokens.
    Returns:
        allowed (B, n, S) bool, and the episode starts (B,) int64 after the step.
    """
    n = in_window.shape[0]
    query_start = episode_start[:, None].expand(-1, n).clone()                 # (B, n)
    if new_episode is not None:
        episode_start = torch.where(new_episode, boundary, episode_start)
        query_start[:, z_pos:] = episode_start[:, None]
    allowed = in_window[None] & (key_token[None, None, :] >= query_start[:, :, None])
    return allowed, episode_start
