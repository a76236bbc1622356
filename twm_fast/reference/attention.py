"""Relative-position (Transformer-XL) attention in plain PyTorch: the twin of the Triton kernels.

Dai et al. (2019), as SPEC 3 fixes it: the score of query i and key j is

    ((q_i + u) . k_j  +  (q_i + v) . rel_pos[dist(i, j)]) * scale

where rel_pos[d] = W_R R(d) is the projected sinusoidal encoding of the distance d = i - j in
tokens, and scale = 1/sqrt(model width) (not the head width). Masked keys get zero weight.

The same function serves the whole training window (keys = the window's tokens) and one cached
imagination step (keys = the layer's K/V cache, which already holds the new tokens): the caller
says, per query and key, the distance and whether the key is visible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rel_attention_probs_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    rel_pos: torch.Tensor,
    u_bias: torch.Tensor,
    v_bias: torch.Tensor,
    dist: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The attention probabilities of `rel_attention_ref` (before dropout): (B, H, T, S).

    Arguments as `rel_attention_ref`. The kernels never materialise these; this is how a caller that
    wants to look at them (the dream page's attention view) gets them for the same inputs.
    """
    dist = dist.clamp(0, rel_pos.shape[0] - 1)
    rel = rel_pos[dist]                                                   # (T, S, H, D) or (B, T, S, H, D)
    content = torch.einsum("bthd,bshd->bhts", q + u_bias, k)             # (B, H, T, S)
    if rel.dim() == 4:
        position = torch.einsum("bthd,tshd->bhts", q + v_bias, rel)      # (B, H, T, S)
    else:
        position = torch.einsum("bthd,btshd->bhts", q + v_bias, rel)
    scores = (content + position) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1)


def rel_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos: torch.Tensor,
    u_bias: torch.Tensor,
    v_bias: torch.Tensor,
    dist: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Relative-position multi-head attention.

    Args:
        q: (B, T, H, D) queries.
        k, v: (B, S, H, D) keys and values.
        rel_pos: (R, H, D) projected relative encodings, row d for distance d = 0 .. R-1.
        u_bias, v_bias: (H, D) the learned content and position biases.
        dist: (T, S) or (B, T, S) integer distance of key j from query i, in [0, R); its value
            is ignored where the key is not allowed.
        allowed: (B, T, S) bool, True where query i may attend to key j. Every query must see
            at least one key (itself, in our use).
        scale: multiplies the scores; TWM uses 1/sqrt(H * D).
        dropout_p: dropout on the attention probabilities (training only).
    Returns:
        (B, T, H, D) the attention-weighted values (before the output projection).
    """
    probs = rel_attention_probs_ref(q, k, rel_pos, u_bias, v_bias, dist, allowed, scale)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.einsum("bhts,bshd->bthd", probs, v)                    # (B, T, H, D)


def rel_attention_step_ref(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    rel_pos: torch.Tensor,
    u_bias: torch.Tensor,
    v_bias: torch.Tensor,
    dist: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One cached step: write the new tokens' keys and values into the cache, then attend over it.

    Args:
        q, k_new, v_new: (B, n, H, D) the new tokens' queries, keys and values.
        k_cache, v_cache: (B, S, H, D) the K/V cache, written in place at `slots`.
        slots: (n,) int64, the cache slots of the new tokens.
        rel_pos, u_bias, v_bias, dist, allowed, scale: as `rel_attention_ref`, over the S slots.
    Returns:
        (B, n, H, D).
    """
    k_cache[:, slots] = k_new
    v_cache[:, slots] = v_new
    return rel_attention_ref(q, k_cache, v_cache, rel_pos, u_bias, v_bias, dist, allowed, scale)
