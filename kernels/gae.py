"""Generalised advantage estimation over the imagination horizon in one Triton kernel.

The twin is `twm_fast.reference.gae.gae_ref`: A_t = delta_t + g_t * lam * A_{t+1} with
delta_t = r_t + g_t * V_{t+1} - V_t (SPEC 4). The reference launches about 5 kernels per step of
the horizon (75 for H = 15); here one lane per trajectory runs the backward recursion in registers.
Forward only: advantages are regression targets and policy-gradient weights, never differentiated.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from twm_fast.kernels.runtime import interpreted

# Trajectories per program, one per lane: 800 imagined trajectories -> 7 programs. The recursion is
# sequential in t, so the parallelism is over trajectories; 128 lanes = 4 warps.
TRAJECTORIES_PER_PROGRAM = 128
NUM_WARPS = 4

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _gae_fwd_kernel(
    rewards_ptr, discounts_ptr, values_ptr, out_ptr, N, H, lam,
    stride_rn, stride_rh, stride_dn, stride_dh, stride_vn, stride_vh, stride_on, stride_oh,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = rows < N
    rows = rows.to(tl.int64)
    next_value = tl.load(values_ptr + rows * stride_vn + H * stride_vh, mask=ok, other=0.0).to(tl.float32)
    advantage = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in range(0, H):
        t = H - 1 - i
        reward = tl.load(rewards_ptr + rows * stride_rn + t * stride_rh, mask=ok, other=0.0)
        discount = tl.load(discounts_ptr + rows * stride_dn + t * stride_dh, mask=ok, other=0.0)
        value = tl.load(values_ptr + rows * stride_vn + t * stride_vh, mask=ok, other=0.0)
        reward, discount, value = reward.to(tl.float32), discount.to(tl.float32), value.to(tl.float32)
        # Same association as the reference: (r + g V') - V, then delta + (g lam) A'.
        delta = (reward + discount * next_value) - value
        advantage = delta + (discount * lam) * advantage
        tl.store(out_ptr + rows * stride_on + t * stride_oh, advantage.to(out_ptr.dtype.element_ty), mask=ok)
        next_value = value


def gae_fwd(rewards, discounts, values, lam, out=None):
    """Advantages (N, H) from rewards (N, H), discounts (N, H) and values (N, H + 1); see `gae`.

    out: optional (N, H) tensor of values' dtype (the reference's output dtype) to write into.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (N, H); got {tuple(rewards.shape)}")
    N, H = rewards.shape
    if discounts.shape != (N, H) or values.shape != (N, H + 1):
        raise ValueError(f"discounts must be (N={N}, H={H}) and values (N, H + 1 = {H + 1}); got "
                         f"{tuple(discounts.shape)} and {tuple(values.shape)}")
    for name, t in (("rewards", rewards), ("discounts", discounts), ("values", values)):
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be one of {_FLOAT_DTYPES}; got {t.dtype}")
        if t.device != rewards.device:
            raise ValueError(f"{name} is on {t.device}, rewards on {rewards.device}")
    if out is None:
        out = torch.empty(N, H, dtype=values.dtype, device=rewards.device)
    elif out.shape != (N, H) or out.dtype != values.dtype or out.device != rewards.device:
        raise ValueError(f"out must be a {values.dtype} ({N}, {H}) tensor on {rewards.device}; got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    _gae_fwd_kernel[(triton.cdiv(N, TRAJECTORIES_PER_PROGRAM),)](
        rewards, discounts, values, out, N, H, float(lam),
        *rewards.stride(), *discounts.stride(), *values.stride(), *out.stride(),
        BLOCK_N=TRAJECTORIES_PER_PROGRAM, num_warps=NUM_WARPS,
    )
    return out


def gae(rewards, discounts, values, lam):
    """GAE advantages, fused; the twin of `gae_ref`.

    Args:
        rewards: (N, H) rewards r_t; discounts: (N, H) discounts g_t (zero after a reset);
        values: (N, H + 1) critic values, the last column bootstraps; lam: the GAE lambda.
    Returns:
        (N, H) advantages in values' dtype.
    """
    return gae_fwd(rewards, discounts, values, lam)


def gae_unsupported(rewards, discounts, values, lam):
    """Why the kernel cannot run these (valid) arguments, or None when it can."""
    tensors = (rewards, discounts, values)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "the GAE kernel has no backward; an input requires grad"
    if any(t.dtype not in _FLOAT_DTYPES for t in tensors):
        return f"dtypes must be among {_FLOAT_DTYPES}"
    if interpreted() and any(t.dtype == torch.bfloat16 for t in tensors):
        return "bfloat16 needs a GPU: the Triton interpreter has no bfloat16"
    return None
