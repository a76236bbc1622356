"""The episode-boundary mask of a cached imagination step (SPEC 3) in one Triton kernel.

The twin is `twm_fast.reference.episode_mask.episode_mask_ref`: the new episode starts (a `where`)
and, for each sequence and new token, the cache slots it may see: inside the memory window and not
before its episode's first token. PyTorch spends five small kernels per step on it (a clone, a
where, a copy, a comparison and an and); here one pass over the B sequences.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Sequences per program: 800 imagined trajectories -> 25 programs.
ROWS_PER_PROGRAM = 32
NUM_WARPS = 4
# A step appends at most this many tokens (r, z, a), unrolled in the kernel; the cache has at most
# MAX_SLOTS slots (53 in the paper's configuration).
MAX_NEW_TOKENS = 4
MAX_SLOTS = 1024


@triton.jit
def _episode_mask_kernel(
    start_ptr, new_episode_ptr, key_token_ptr, in_window_ptr, allowed_ptr, new_start_ptr,
    B, S, boundary, stride_start, stride_new,
    N_NEW: tl.constexpr, Z_POS: tl.constexpr, HAS_NEW: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_S)
    row_ok = rows < B
    col_ok = cols < S
    old_start = tl.load(start_ptr + rows * stride_start, mask=row_ok, other=0)
    new_start = old_start
    if HAS_NEW:
        new_episode = tl.load(new_episode_ptr + rows * stride_new, mask=row_ok, other=0) != 0
        new_start = tl.where(new_episode, boundary, old_start)
    tl.store(new_start_ptr + rows, new_start, mask=row_ok)
    key_token = tl.load(key_token_ptr + cols, mask=col_ok, other=-1)
    ok = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    for t in tl.static_range(N_NEW):
        # The z token and those after it belong to the new episode, the ones before to the old.
        query_start = new_start if t >= Z_POS else old_start
        window = tl.load(in_window_ptr + t * S + cols, mask=col_ok, other=0) != 0
        allowed = window[None, :] & (key_token[None, :] >= query_start[:, None])
        tl.store(allowed_ptr + (rows64[:, None] * N_NEW + t) * S + cols[None, :], allowed.to(tl.int8), mask=ok)


def episode_mask(episode_start, new_episode, key_token, in_window, boundary, z_pos):
    """The episode-boundary mask of a cached step, fused; the twin of `episode_mask_ref`.

    Args:
        episode_start: (B,) int64; new_episode: (B,) bool or None (any strides, e.g. a column of the
        rollout's dones); key_token: (S,) int64; in_window: (n, S) bool; boundary: int; z_pos: int in [0, n).
    Returns:
        allowed (B, n, S) bool and the new episode starts (B,) int64.
    """
    _check_inputs(episode_start, new_episode, key_token, in_window, z_pos)
    B, (n, S) = episode_start.shape[0], in_window.shape
    key_token, in_window = key_token.contiguous(), in_window.contiguous()  # (the model's are already)
    allowed = torch.empty(B, n, S, dtype=torch.bool, device=episode_start.device)
    new_start = torch.empty(B, dtype=torch.int64, device=episode_start.device)
    new = episode_start if new_episode is None else new_episode.view(torch.int8)
    _episode_mask_kernel[(triton.cdiv(B, ROWS_PER_PROGRAM),)](
        episode_start, new, key_token, in_window.view(torch.int8), allowed.view(torch.int8), new_start,
        B, S, int(boundary), episode_start.stride(0), new.stride(0),
        N_NEW=n, Z_POS=int(z_pos), HAS_NEW=new_episode is not None,
        BLOCK_B=ROWS_PER_PROGRAM, BLOCK_S=triton.next_power_of_2(S), num_warps=NUM_WARPS,
    )
    return allowed, new_start


def _check_inputs(episode_start, new_episode, key_token, in_window, z_pos):
    if episode_start.dim() != 1 or episode_start.dtype != torch.int64:
        raise ValueError(f"episode_start must be an int64 (B,) tensor; got {episode_start.dtype} "
                         f"{tuple(episode_start.shape)}")
    B = episode_start.shape[0]
    if new_episode is not None and (new_episode.shape != (B,) or new_episode.dtype != torch.bool):
        raise ValueError(f"new_episode must be a bool ({B},) tensor or None; got {new_episode.dtype} "
                         f"{tuple(new_episode.shape)}")
    if in_window.dim() != 2 or in_window.dtype != torch.bool:
        raise ValueError(f"in_window must be a bool (n, S) tensor; got {in_window.dtype} {tuple(in_window.shape)}")
    n, S = in_window.shape
    if key_token.shape != (S,) or key_token.dtype != torch.int64:
        raise ValueError(f"key_token must be an int64 ({S},) tensor; got {key_token.dtype} "
                         f"{tuple(key_token.shape)}")
    if not 1 <= n <= MAX_NEW_TOKENS or S > MAX_SLOTS:
        raise ValueError(f"the kernel takes 1 to {MAX_NEW_TOKENS} new tokens and at most {MAX_SLOTS} slots; got "
                         f"n={n}, S={S}")
    if not 0 <= z_pos < n:
        raise ValueError(f"z_pos must index one of the {n} new tokens; got {z_pos}")
    tensors = [t for t in (episode_start, new_episode, key_token, in_window) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError("all inputs must be on one device")


def episode_mask_unsupported(episode_start, new_episode, key_token, in_window, boundary, z_pos):
    """Why the kernel cannot run these (valid) arguments, or None when it can."""
    n, S = in_window.shape
    if n > MAX_NEW_TOKENS or S > MAX_SLOTS:
        return f"the kernel takes at most {MAX_NEW_TOKENS} new tokens and {MAX_SLOTS} slots; got n={n}, S={S}"
    return None
