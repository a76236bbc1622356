"""A linear layer with its neighbours fused in: one Triton kernel per Linear of an imagination step.

The twin is `twm_fast.reference.linear.fused_linear_ref`:

    y = silu?(x) @ W^T + b,  then silu?(y),  then LayerNorm(residual + y)?

PERF.md's profile of a graphed plain-PyTorch rollout: about 6,000 kernels, most of them small
elementwise ones around the GEMMs. Each Linear of the cached transformer step and of the heads
is followed (or preceded) by elementwise work, and a post-norm layer ends in an add and a
LayerNorm. Here the GEMM's epilogue does that work in registers: per layer and step, out_proj +
residual + LayerNorm, linear1 + SiLU and linear2 + residual + LayerNorm are three kernels instead
of eight, and a head layer with its SiLU is one instead of two.

One program owns a block of rows and a block of output features; with the residual LayerNorm the
block spans the whole row (the mean and variance need all of it), so the width is capped at
MAX_NORM_WIDTH. Accumulation, the epilogue and the LayerNorm statistics are fp32 whatever the
input dtype (bf16 PyTorch rounds after the GEMM and after the add; this rounds once, at the
store). fp32 products follow torch's matmul precision (kernels/precision.py): IEEE under "highest", TF32
under "high", as cuBLAS does for the reference.

Forward only: the world-model update trains with dropout between these ops, so training keeps the
reference; `fused_linear_unsupported` sends any call that needs a gradient there.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from twm_fast.kernels.runtime import ieee_fp32, interpreted

# The LayerNorm epilogue holds a whole row in one tile: the model width (256) and the feed-forward
# width (1024) both fit.
MAX_NORM_WIDTH = 1024
# Rows per program. An imagination step has 3 x 800 = 2,400 token rows (800 for the heads): 32
# rows give 75 programs per 256-wide output, 16 rows (the smallest tl.dot tile) give 150 for
# the smaller calls, so that both fill an H100/H200's 132 SMs.
BLOCK_ROWS_LARGE, BLOCK_ROWS_SMALL, LARGE_ROWS = 32, 16, 2048
# Output features per program without the LayerNorm, and the reduction step.
BLOCK_FEATURES = 128
BLOCK_REDUCTION = 32
NUM_WARPS = 4

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _fused_linear_kernel(
    x_ptr, w_ptr, b_ptr, res_ptr, gamma_ptr, beta_ptr, out_ptr,
    M, N, K, eps,
    stride_xm, stride_wn, stride_rm, stride_om,
    HAS_BIAS: tl.constexpr, INPUT_SILU: tl.constexpr, OUTPUT_SILU: tl.constexpr,
    RESIDUAL_NORM: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rows = offs_m.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        x = tl.load(x_ptr + rows[:, None] * stride_xm + (k0 + offs_k)[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if INPUT_SILU:
            # Rounded back to the input dtype, as the reference's separate SiLU stores it (silu(0) = 0,
            # so the padding stays zero).
            x = _silu(x.to(tl.float32)).to(x_ptr.dtype.element_ty)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + (k0 + offs_k)[None, :],
                    mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if OUTPUT_SILU:
        acc = _silu(acc)
    if RESIDUAL_NORM:
        # Post-norm: LayerNorm(residual + y) over the whole row (BLOCK_N >= N, one program per row block).
        residual = tl.load(res_ptr + rows[:, None] * stride_rm + offs_n[None, :],
                           mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.where(n_ok[None, :], acc + residual.to(tl.float32), 0.0)
        mean = tl.sum(acc, axis=1) / N
        centred = tl.where(n_ok[None, :], acc - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / N + eps)
        gamma = tl.load(gamma_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        acc = centred * rstd[:, None] * gamma[None, :] + beta[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _check_inputs(x, weight, bias, residual, norm_weight, norm_bias):
    if weight.dim() != 2:
        raise ValueError(f"weight must be (out_features, in_features); got {tuple(weight.shape)}")
    N, K = weight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x must be (..., in_features={K}); got {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"x and weight must share one of {_FLOAT_DTYPES}; got {x.dtype} and {weight.dtype}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must be (out_features={N},); got {tuple(bias.shape)}")
    if (residual is None) != (norm_weight is None) or (norm_weight is None) != (norm_bias is None):
        raise ValueError("residual, norm_weight and norm_bias go together (LayerNorm(residual + y)); "
                         "pass all three or none")
    if residual is not None:
        if residual.shape != (*x.shape[:-1], N):
            raise ValueError(f"residual must be (..., out_features={N}) like x's leading dims "
                             f"{tuple(x.shape[:-1])}; got {tuple(residual.shape)}")
        if norm_weight.shape != (N,) or norm_bias.shape != (N,):
            raise ValueError(f"norm_weight and norm_bias must be ({N},); got {tuple(norm_weight.shape)}, "
                             f"{tuple(norm_bias.shape)}")
    tensors = [t for t in (x, weight, bias, residual, norm_weight, norm_bias) if t is not None]
    if any(t.dtype not in _FLOAT_DTYPES for t in tensors):
        raise ValueError(f"all inputs must be floating point among {_FLOAT_DTYPES}")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device; got {sorted(map(str, devices))}")


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """t (..., width) as (rows, width) with a unit feature stride (a view when the layout allows)."""
    rows = t.reshape(-1, width)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def fused_linear_fwd(x, weight, bias=None, residual=None, norm_weight=None, norm_bias=None, eps=1e-5,
                     input_silu=False, output_silu=False, out=None, block_rows=None, num_warps=None):
    """The fused layer's forward (no autograd); see `fused_linear` for the arguments.

    out: optional (..., out_features) tensor of x's dtype to write into (contiguous).
    block_rows, num_warps: tuning overrides (rows per program, a power of two >= 16), swept by
        benches/gpu_report.py.
    """
    _check_inputs(x, weight, bias, residual, norm_weight, norm_bias)
    N, K = weight.shape
    lead = x.shape[:-1]
    x2 = _rows(x, K)
    M = x2.shape[0]
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    if out is None:
        out = torch.empty(*lead, N, dtype=x.dtype, device=x.device)
    elif out.shape != (*lead, N) or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} {(*lead, N)} tensor on {x.device}; got "
                         f"{out.dtype} {tuple(out.shape)}")
    out2 = out.view(-1, N)
    norm = residual is not None
    if norm and N > MAX_NORM_WIDTH:
        raise ValueError(f"the LayerNorm epilogue holds a row of at most {MAX_NORM_WIDTH} features; got {N}")
    res2 = _rows(residual, N) if norm else out2  # any pointer when unused
    block_n = max(16, triton.next_power_of_2(N)) if norm else min(BLOCK_FEATURES, max(16, triton.next_power_of_2(N)))
    # A whole-row tile wider than the model width would spill its fp32 accumulator: fewer rows then;
    # so would a model-width one whose IEEE fp32 products run on CUDA cores (their operands live in
    # registers too: 40 B/thread on sm_80 with 32 rows, the compile check's survey).
    wide = block_n > 256
    ieee = ieee_fp32(x.dtype)
    block_m = block_rows or (BLOCK_ROWS_LARGE if M >= LARGE_ROWS and not wide and not (ieee and norm)
                             else BLOCK_ROWS_SMALL)
    if block_m < 16 or block_m != triton.next_power_of_2(block_m):
        raise ValueError(f"block_rows must be a power of two >= 16 (a tl.dot tile); got {block_m}")
    block_k = min(BLOCK_REDUCTION, max(16, triton.next_power_of_2(K)))
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _fused_linear_kernel[grid](
        x2, weight, bias if bias is not None else weight, res2,
        norm_weight if norm else weight, norm_bias if norm else weight, out2,
        M, N, K, float(eps),
        x2.stride(0), weight.stride(0), res2.stride(0), out2.stride(0),
        HAS_BIAS=bias is not None, INPUT_SILU=bool(input_silu), OUTPUT_SILU=bool(output_silu),
        RESIDUAL_NORM=norm, IEEE=ieee, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps or (2 * NUM_WARPS if wide else NUM_WARPS),
    )
    return out


def fused_linear(x, weight, bias=None, residual=None, norm_weight=None, norm_bias=None, eps=1e-5,
                 input_silu=False, output_silu=False):
    """silu?(x) @ weight^T + bias, then silu?, then LayerNorm(residual + .) (forward only).

    Args:
        x: (..., in_features); weight: (out_features, in_features) (an nn.Linear's); bias: (out,) or None.
        residual: (..., out_features) or None; norm_weight, norm_bias: the LayerNorm's affine
            parameters (out_features,), given with residual; eps: the LayerNorm's epsilon.
        input_silu: apply SiLU to x first; output_silu: apply SiLU to the linear's output.
    Returns:
        (..., out_features) in x's dtype.
    """
    return fused_linear_fwd(x, weight, bias, residual, norm_weight, norm_bias, eps, input_silu, output_silu)


def fused_linear_unsupported(x, weight, bias=None, residual=None, norm_weight=None, norm_bias=None, eps=1e-5,
                             input_silu=False, output_silu=False):
    """Why the kernel cannot run these (valid) arguments, or None when it can."""
    tensors = [t for t in (x, weight, bias, residual, norm_weight, norm_bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "the fused linear kernel has no backward; an input requires grad"
    if any(t.dtype not in _FLOAT_DTYPES for t in tensors) or weight.dtype != x.dtype:
        return f"x and weight must share one of {_FLOAT_DTYPES}"
    if residual is not None and weight.shape[0] > MAX_NORM_WIDTH:
        return f"the LayerNorm epilogue holds at most {MAX_NORM_WIDTH} features; got {weight.shape[0]}"
    if interpreted() and any(t.dtype == torch.bfloat16 for t in tensors):
        return "bfloat16 needs a GPU: the Triton interpreter has no bfloat16"
    return None
