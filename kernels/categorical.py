"""Fused sampler of categorical latents: logits -> one-hot sample, probs, log-probs, entropy in one pass.

The twin is `twm_fast.reference.categorical.categorical_sample_ref`. Randomness is an input: the
sample is argmax(logits + Gumbel(u)) for uniform noise u, with Gumbel(u) = -log(-log(clamp(u))),
computed here exactly as the reference computes it, rounding included: in a reduced-precision
dtype each PyTorch op rounds its result, so the kernel rounds at the same places. The same noise
therefore gives the same one-hot as the reference (argmax takes the first of tied maxima, as
torch.argmax does). The straight-through variant forwards the hard one-hot and back-propagates
through the probabilities (onehot + probs - stopgrad(probs), SPEC 2); its forward value is the
exact one-hot, where the reference's `onehot + probs - probs` carries a rounding error of one ulp
(fp32) to a few tenths of a percent (bf16).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from twm_fast.kernels.runtime import interpreted

MODES = {"sample": 0, "straight_through": 1, "argmax": 2}
# The reference clamps the noise into [1e-20, 1 - 1e-7] so that -log(-log(u)) stays finite.
# tl.constexpr: a @triton.jit function may read a module global only if it is one (the GPU compiler
# refuses a plain float with "Cannot access global variable"; the interpreter does not check).
NOISE_MIN = tl.constexpr(1e-20)
NOISE_MAX = tl.constexpr(1.0 - 1e-7)
# Rows (one categorical each) per program: 64 rows of 32 classes = 2,048 elements, 16 per thread
# with 4 warps; the (12,000 x 32)-row sampler of an imagination batch runs 6,000 programs.
ROWS_PER_PROGRAM = 64
NUM_WARPS = 4
# Classes in one tile (SPEC 2: 32).
MAX_CLASSES = 1024

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _log_softmax_rows(logits_ptr, offs, ok, col_ok):
    """Loads a (rows, classes) tile; returns fp32 logits (-inf in padding), log-probs (0 in padding,
    so that products with the zero probabilities there stay 0) and probs."""
    x = tl.load(logits_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    x = tl.where(col_ok[None, :], x, float("-inf"))
    shifted = x - tl.max(x, axis=1)[:, None]
    log_probs = shifted - tl.log(tl.sum(tl.exp(shifted), axis=1))[:, None]
    return x, tl.where(col_ok[None, :], log_probs, 0.0), tl.exp(log_probs)


@triton.jit
def _categorical_sample_fwd_kernel(
    logits_ptr, noise_ptr, onehot_ptr, probs_ptr, log_probs_ptr, entropy_ptr, ROWS, C,
    MODE: tl.constexpr, GUMBEL_DTYPE: tl.constexpr, SCORE_DTYPE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < ROWS
    col_ok = cols < C
    ok = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]

    x, log_probs, probs = _log_softmax_rows(logits_ptr, offs, ok, col_ok)
    entropy = -tl.sum(probs * log_probs, axis=1)
    if MODE == 2:
        score = x
    else:
        # The reference's ops one by one, each result rounded to its dtype as PyTorch stores it.
        u = tl.load(noise_ptr + offs, mask=ok, other=0.5).to(tl.float32)
        u = tl.minimum(tl.maximum(u, NOISE_MIN), NOISE_MAX).to(GUMBEL_DTYPE).to(tl.float32)
        neg_log_u = -(tl.log(u).to(GUMBEL_DTYPE).to(tl.float32))
        gumbel = -(tl.log(neg_log_u).to(GUMBEL_DTYPE).to(tl.float32))
        score = (x + gumbel).to(SCORE_DTYPE).to(tl.float32)
        score = tl.where(col_ok[None, :], score, float("-inf"))
    index = tl.argmax(score, axis=1, tie_break_left=True)
    onehot = tl.where(cols[None, :] == index[:, None], 1.0, 0.0)

    out_dtype = onehot_ptr.dtype.element_ty
    tl.store(onehot_ptr + offs, onehot.to(out_dtype), mask=ok)
    tl.store(probs_ptr + offs, probs.to(out_dtype), mask=ok)
    tl.store(log_probs_ptr + offs, log_probs.to(out_dtype), mask=ok)
    tl.store(entropy_ptr + rows, entropy.to(out_dtype), mask=row_ok)


@triton.jit
def _categorical_sample_bwd_kernel(
    logits_ptr, grad_onehot_ptr, grad_probs_ptr, grad_log_probs_ptr, grad_entropy_ptr, grad_logits_ptr,
    ROWS, C,
    HAS_ONEHOT: tl.constexpr, HAS_PROBS: tl.constexpr, HAS_LOG_PROBS: tl.constexpr, HAS_ENTROPY: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """d logits from the gradients of the outputs that were used, through log_softmax.

    With G the total gradient reaching the log-probs, d logits = G - probs * sum(G), and
    G = g_logp + probs * (g_probs + g_onehot) - g_entropy * probs * (1 + logp), since
    probs = exp(logp), entropy = -sum(probs * logp), and the straight-through one-hot
    passes its gradient to probs.
    """
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < ROWS
    col_ok = cols < C
    ok = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]

    _, log_probs, probs = _log_softmax_rows(logits_ptr, offs, ok, col_ok)
    grad = tl.zeros((BLOCK_ROWS, BLOCK_C), dtype=tl.float32)
    if HAS_ONEHOT:
        grad += tl.load(grad_onehot_ptr + offs, mask=ok, other=0.0).to(tl.float32) * probs
    if HAS_PROBS:
        grad += tl.load(grad_probs_ptr + offs, mask=ok, other=0.0).to(tl.float32) * probs
    if HAS_LOG_PROBS:
        grad += tl.load(grad_log_probs_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_ENTROPY:
        grad_entropy = tl.load(grad_entropy_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        grad -= grad_entropy[:, None] * probs * (1.0 + log_probs)
    grad_logits = grad - probs * tl.sum(grad, axis=1)[:, None]
    tl.store(grad_logits_ptr + offs, grad_logits.to(grad_logits_ptr.dtype.element_ty), mask=ok)


def _check_logits(logits, noise, mode):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use 'sample', 'straight_through' or 'argmax'")
    if logits.dim() != 3:
        raise ValueError(f"logits must be (N, V, C); got {tuple(logits.shape)}")
    if logits.dtype not in _TL_DTYPES:
        raise ValueError(f"logits must be one of {tuple(_TL_DTYPES)}; got {logits.dtype}")
    if not logits.is_contiguous():
        raise ValueError(f"logits must be contiguous; got strides {logits.stride()}")
    if logits.shape[-1] > MAX_CLASSES:
        raise ValueError(f"at most {MAX_CLASSES} classes per categorical; got {logits.shape[-1]}")
    if mode == "argmax":
        return
    if noise is None:
        raise ValueError(f"mode {mode!r} needs uniform noise of the logits' shape")
    if noise.shape != logits.shape or noise.dtype not in _TL_DTYPES or not noise.is_contiguous() \
            or noise.device != logits.device:
        raise ValueError(f"noise must be a contiguous floating {tuple(logits.shape)} tensor on "
                         f"{logits.device}; got {noise.dtype} {tuple(noise.shape)} on {noise.device}, "
                         f"strides {noise.stride()}")


def categorical_sample_fwd(logits, noise, mode="sample", out=None):
    """Forward of the sampler (no autograd). See `categorical_sample` for the shapes.

    out: optional (onehot, probs, log_probs, entropy) to write into: contiguous, logits' dtype,
    shapes (N, V, C), (N, V, C), (N, V, C), (N, V).
    """
    _check_logits(logits, noise, mode)
    N, V, C = logits.shape
    if out is None:
        out = (torch.empty_like(logits), torch.empty_like(logits), torch.empty_like(logits),
               torch.empty(N, V, dtype=logits.dtype, device=logits.device))
    else:
        shapes = (logits.shape, logits.shape, logits.shape, (N, V))
        for name, t, shape in zip(("onehot", "probs", "log_probs", "entropy"), out, shapes):
            if t.shape != shape or t.dtype != logits.dtype or not t.is_contiguous() \
                    or t.device != logits.device:
                raise ValueError(f"out {name} must be a contiguous {logits.dtype} {tuple(shape)} tensor on "
                                 f"{logits.device}; got {t.dtype} {tuple(t.shape)}")
    onehot, probs, log_probs, entropy = out
    rows = N * V
    if mode == "argmax":
        noise, gumbel_dtype, score_dtype = logits, tl.float32, tl.float32  # noise unread
    else:
        gumbel_dtype = _TL_DTYPES[noise.dtype]
        score_dtype = _TL_DTYPES[torch.promote_types(logits.dtype, noise.dtype)]
    _categorical_sample_fwd_kernel[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](
        logits, noise, onehot, probs, log_probs, entropy, rows, C,
        MODE=MODES[mode], GUMBEL_DTYPE=gumbel_dtype, SCORE_DTYPE=score_dtype,
        BLOCK_ROWS=ROWS_PER_PROGRAM, BLOCK_C=triton.next_power_of_2(C), num_warps=NUM_WARPS,
    )
    return onehot, probs, log_probs, entropy


def categorical_sample_bwd(logits, grad_onehot, grad_probs, grad_log_probs, grad_entropy):
    """d logits for the upstream gradients of (onehot, probs, log_probs, entropy); each may be None.

    grad_onehot is used only by the straight-through variant (the caller passes None otherwise).
    """
    N, V, C = logits.shape
    grads = [None if g is None else g.contiguous()
             for g in (grad_onehot, grad_probs, grad_log_probs, grad_entropy)]
    for g, shape in zip(grads, (logits.shape,) * 3 + ((N, V),)):
        if g is not None and g.shape != shape:
            raise ValueError(f"an upstream gradient has shape {tuple(g.shape)}; expected {tuple(shape)}")
    grad_logits = torch.empty_like(logits)
    rows = N * V
    _categorical_sample_bwd_kernel[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](
        logits, *(logits if g is None else g for g in grads), grad_logits, rows, C,
        HAS_ONEHOT=grads[0] is not None, HAS_PROBS=grads[1] is not None,
        HAS_LOG_PROBS=grads[2] is not None, HAS_ENTROPY=grads[3] is not None,
        BLOCK_ROWS=ROWS_PER_PROGRAM, BLOCK_C=triton.next_power_of_2(C), num_warps=NUM_WARPS,
    )
    return grad_logits


class CategoricalSample(torch.autograd.Function):
    """The sampler with gradients to the logits through probs, log_probs, entropy and, in the
    straight-through mode, the one-hot."""

    @staticmethod
    def forward(ctx, logits, noise, mode):
        onehot, probs, log_probs, entropy = categorical_sample_fwd(logits, noise, mode)
        ctx.save_for_backward(logits)
        ctx.straight_through = mode == "straight_through"
        ctx.set_materialize_grads(False)
        if not ctx.straight_through:
            ctx.mark_non_differentiable(onehot)
        return onehot, probs, log_probs, entropy

    @staticmethod
    def backward(ctx, grad_onehot, grad_probs, grad_log_probs, grad_entropy):
        (logits,) = ctx.saved_tensors
        grad_onehot = grad_onehot if ctx.straight_through else None
        if all(g is None for g in (grad_onehot, grad_probs, grad_log_probs, grad_entropy)):
            return None, None, None
        grad_logits = categorical_sample_bwd(logits, grad_onehot, grad_probs, grad_log_probs, grad_entropy)
        return grad_logits, None, None


def categorical_sample(logits, noise, mode="sample"):
    """Sample one-hot vectors from independent categoricals, fused; the twin of `categorical_sample_ref`.

    Args:
        logits: (N, V, C) unnormalised logits of V categoricals with C classes (SPEC 2: V = C = 32).
        noise: (N, V, C) uniform noise in (0, 1); unused (may be None) when mode == "argmax".
        mode: "sample", "straight_through" or "argmax" (see the reference).
    Returns:
        onehot (N, V, C), probs (N, V, C), log_probs (N, V, C), entropy (N, V), in logits' dtype.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use 'sample', 'straight_through' or 'argmax'")
    logits = logits.contiguous()
    if noise is not None:
        noise = noise.contiguous()
    if torch.is_grad_enabled() and logits.requires_grad:
        return CategoricalSample.apply(logits, noise, mode)
    return categorical_sample_fwd(logits, noise, mode)


def categorical_sample_unsupported(logits, noise, mode="sample"):
    """Why the kernel cannot run these (valid) arguments, or None when it can."""
    if logits.dim() != 3 or logits.shape[-1] > MAX_CLASSES:
        return f"logits must be (N, V, C) with C <= {MAX_CLASSES}; got {tuple(logits.shape)}"
    dtypes = {logits.dtype} | ({noise.dtype} if noise is not None else set())
    if not dtypes <= set(_TL_DTYPES):
        return f"dtypes {sorted(map(str, dtypes))} are not among {tuple(_TL_DTYPES)}"
    if interpreted() and torch.bfloat16 in dtypes:
        return "bfloat16 needs a GPU: the Triton interpreter has no bfloat16"
    return None
