"""The discount-threshold reset of an imagination step (SPEC 5.3) in one Triton kernel.

The twin is `twm_fast.reference.discount_reset.discount_reset_ref`: after the heads of a step, the
predicted discount g_t = clip(sigmoid(logit), 0, 1), the step's weight (the cumulative discount,
restarting at 1 after a reset), the new cumulative discount, the done flag (cumulative below the
threshold) and z_{t+1} replaced by a restart latent where done. In PyTorch that is eight small
kernels per step (sigmoid, clamp, ones_like, where, mul, lt, a gather and a where over the
latents); here one pass over the M trajectories, the latents copied row by row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from twm_fast.kernels.runtime import interpreted

# Trajectories per program: 800 -> 25 programs. Each also copies its rows of z (32 x 32 = 1,024
# values), in chunks of BLOCK_Z: 32 x 128 tiles keep it at about 130 registers a thread (256 took
# 254, the compile check's survey), for a kernel that only moves memory.
ROWS_PER_PROGRAM = 32
BLOCK_Z = 128
NUM_WARPS = 4

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _discount_reset_kernel(
    logit_ptr, prev_done_ptr, cumulative_ptr, next_z_ptr, restart_z_ptr, restart_index_ptr,
    discount_ptr, weight_ptr, new_cumulative_ptr, done_ptr, z_ptr,
    M, Z, threshold,
    stride_nm, stride_rp, stride_zm,
    BLOCK_M: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = rows < M
    logit = tl.load(logit_ptr + rows, mask=ok, other=0.0).to(tl.float32)
    discount = tl.minimum(tl.maximum(1.0 / (1.0 + tl.exp(-logit)), 0.0), 1.0)
    prev_done = tl.load(prev_done_ptr + rows, mask=ok, other=0) != 0
    weight = tl.where(prev_done, 1.0, tl.load(cumulative_ptr + rows, mask=ok, other=1.0).to(tl.float32))
    cumulative = weight * discount
    done = cumulative < threshold
    tl.store(discount_ptr + rows, discount, mask=ok)
    tl.store(weight_ptr + rows, weight, mask=ok)
    tl.store(new_cumulative_ptr + rows, cumulative, mask=ok)
    tl.store(done_ptr + rows, done.to(tl.int8), mask=ok)

    source = tl.load(restart_index_ptr + rows, mask=ok, other=0)
    rows64 = rows.to(tl.int64)
    for z0 in range(0, Z, BLOCK_Z):
        cols = z0 + tl.arange(0, BLOCK_Z)
        tile_ok = ok[:, None] & (cols < Z)[None, :]
        sampled = tl.load(next_z_ptr + rows64[:, None] * stride_nm + cols[None, :], mask=tile_ok, other=0.0)
        restart = tl.load(restart_z_ptr + source[:, None] * stride_rp + cols[None, :], mask=tile_ok & done[:, None],
                          other=0.0)
        tl.store(z_ptr + rows64[:, None] * stride_zm + cols[None, :], tl.where(done[:, None], restart, sampled),
                 mask=tile_ok)


def discount_reset(discount_logit, prev_done, cumulative, next_z, restart_z, restart_index, threshold):
    """The discount-threshold reset of one imagined step, fused; the twin of `discount_reset_ref`.

    Args:
        discount_logit: (M,) floating; prev_done: (M,) bool; cumulative: (M,) float32.
        next_z: (M, Z) the sampled latents; restart_z: (P, Z) their dtype; restart_index: (M,) int64
            rows of restart_z in [0, P); threshold: float.
    Returns:
        discount, weight, cumulative (M,) float32; done (M,) bool; z (M, Z) in next_z's dtype.
    """
    _check_inputs(discount_logit, prev_done, cumulative, next_z, restart_z, restart_index)
    M, Z = next_z.shape
    device = next_z.device
    discount, weight, new_cumulative = (torch.empty(M, dtype=torch.float32, device=device) for _ in range(3))
    done = torch.empty(M, dtype=torch.bool, device=device)
    z = torch.empty_like(next_z, memory_format=torch.contiguous_format)
    _discount_reset_kernel[(triton.cdiv(M, ROWS_PER_PROGRAM),)](
        discount_logit, prev_done.view(torch.int8), cumulative, next_z, restart_z, restart_index,
        discount, weight, new_cumulative, done.view(torch.int8), z,
        M, Z, float(threshold),
        next_z.stride(0), restart_z.stride(0), z.stride(0),
        BLOCK_M=ROWS_PER_PROGRAM, BLOCK_Z=BLOCK_Z, num_warps=NUM_WARPS,
    )
    return discount, weight, new_cumulative, done, z


def _check_inputs(discount_logit, prev_done, cumulative, next_z, restart_z, restart_index):
    if next_z.dim() != 2 or restart_z.dim() != 2 or restart_z.shape[1] != next_z.shape[1]:
        raise ValueError(f"next_z must be (M, Z) and restart_z (P, Z); got {tuple(next_z.shape)}, "
                         f"{tuple(restart_z.shape)}")
    M = next_z.shape[0]
    for name, t in (("discount_logit", discount_logit), ("prev_done", prev_done), ("cumulative", cumulative),
                    ("restart_index", restart_index)):
        if t.shape != (M,) or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous ({M},) tensor; got {tuple(t.shape)} strides {t.stride()}")
    if prev_done.dtype != torch.bool or restart_index.dtype != torch.int64 or cumulative.dtype != torch.float32:
        raise ValueError(f"prev_done must be bool, restart_index int64 and cumulative float32; got "
                         f"{prev_done.dtype}, {restart_index.dtype}, {cumulative.dtype}")
    if discount_logit.dtype not in _FLOAT_DTYPES or next_z.dtype not in _FLOAT_DTYPES \
            or restart_z.dtype != next_z.dtype:
        raise ValueError(f"discount_logit must be floating and restart_z of next_z's floating dtype; got "
                         f"{discount_logit.dtype}, {next_z.dtype}, {restart_z.dtype}")
    if next_z.stride(-1) != 1 or restart_z.stride(-1) != 1:
        raise ValueError("next_z and restart_z must have a contiguous last dimension")
    devices = {t.device for t in (discount_logit, prev_done, cumulative, next_z, restart_z, restart_index)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device; got {sorted(map(str, devices))}")


def discount_reset_unsupported(discount_logit, prev_done, cumulative, next_z, restart_z, restart_index, threshold):
    """Why the kernel cannot run these (valid) arguments, or None when it can."""
    tensors = (discount_logit, cumulative, next_z, restart_z)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "the discount reset kernel has no backward; an input requires grad"
    if interpreted() and any(t.dtype == torch.bfloat16 for t in tensors):
        return "bfloat16 needs a GPU: the Triton interpreter has no bfloat16"
    if any(not t.is_contiguous() for t in (discount_logit, prev_done, cumulative, restart_index)):
        return "the per-trajectory inputs must be contiguous"
    return None
