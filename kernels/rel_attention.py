"""Relative-position (Transformer-XL) attention in one Triton kernel, forward and backward.

The twin is `twm_fast.reference.attention.rel_attention_ref`; SPEC 3 fixes the score

    s(i, j) = ((q_i + u) . k_j + (q_i + v) . rel_pos[dist(i, j)]) * scale

over the keys that `allowed` lets query i see, then a softmax and the weighted sum of the values.

One program owns one (trajectory, head) and a block of queries, and holds all its keys in one tile
(53 in the imagination cache, 50 in the training window). The position term needs, per query i
and key j, the row dist(i, j) of rel_pos: the program computes the (queries x distances) table
P = (q + v) rel_pos^T once (as Transformer-XL does before its "relative shift"), writes it to a
small scratch buffer, and reads P[i, dist(i, j)] back with a gathered load. A register gather
(`tl.gather`) would avoid the scratch, but the Triton compiler asserts on gathers from tiles this
small when several warps share them (triton-lang/triton#5836, #11600); the scratch row is 256
bytes per query, written and read back by the same program (through L1).

Dropout on the attention probabilities (training) draws its keep-mask from a Philox stream keyed
by a seed tensor and the element's index, so the backward regenerates the same mask and a CUDA
graph draws a fresh one on every replay (the seed is a device tensor, drawn without a host sync).

The backward follows FlashAttention-2: the forward keeps its position table P and the log-sum-exp
of each query's scores, so that a backward program can own a block of keys and recompute the
probabilities of its keys alone (exp(score - lse)); it loops over the queries in blocks,
accumulates dK and dV in registers and adds its share of dQ with atomics. Holding all 64 keys of
a (trajectory, head) through that loop instead (k, v, dk, dv and their mma operand copies) spills
on sm_80 and in IEEE fp32 (the ptxas log of `python -m twm_fast.compile_check`).

The training path (forward + backward over the 50-token window) is registered for `auto` on the
expectation that one kernel each way beats the reference's ~10 forward and ~25 backward launches
(and its sort-based scatter of rel_pos[dist]'s gradient); benches/gpu_report.py measures it (rows
attention_train_*). Should it lose there, `rel_attention_unsupported` is the place to send the
differentiable calls back to the reference.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from twm_fast.kernels.runtime import ieee_fp32, interpreted

# One tile of keys per (trajectory, head): the imagination cache holds 16 * 3 + 2 + 3 = 53 keys and
# the training window 50 tokens (SPEC 3), so 64 covers both. Longer inputs go to the reference.
MAX_KEYS = 64
# Rows of rel_pos (distances 0 .. R-1) in one tile: distances reach 52 in the imagination cache.
MAX_DISTANCES = 64
# A cached step appends (r, z, a): 3 tokens (2 for the first step); unrolled in the kernel.
MAX_NEW_TOKENS = 4
# SPEC 3: 4 heads of 64.
MAX_HEAD_DIM = 64
# tl.dot needs each dimension to be at least 16.
MIN_DOT_SIZE = 16
# Up to this many queries per program the products run on CUDA cores (broadcast, multiply, sum):
# an imagination step has 3 new tokens, and a tensor-core tile would pad them to 16 rows, so
# 13/16 of its work would be wasted in a kernel that is bound by reading the K/V cache anyway.
FMA_MAX_QUERIES = 4
# Queries per program on the tensor-core path (training: 50 queries -> 4 programs per
# (trajectory, head), 1,600 programs for B = 100, enough to fill 132 SMs), and per step of the
# backward's loop over the queries of one (trajectory, head).
QUERY_BLOCK = 16
# Keys per backward program: 32 keys x 64 dims for k, v, dk and dv is 32 KB of fp32 state, 64
# registers a thread with 4 warps (the training window's 50 keys -> 2 programs per (trajectory, head)).
BWD_KEY_BLOCK = 32
# Warps per program. 4 suit the 4 x 64 x 64 broadcast products of an imagination step and the
# TF32/bf16 tensor-core forward; the IEEE fp32 forward computes its products on CUDA cores and
# needs 8 to keep its 64 x 64 fp32 tiles of k, v and rel_pos in registers (with 4 it spills).
FWD_NUM_WARPS = 4
FWD_IEEE_NUM_WARPS = 8
BWD_NUM_WARPS = 4
# Philox offsets are int32: (trajectory, head, query, key) must index below 2**31.
MAX_DROPOUT_ELEMENTS = 2**31 - 1

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _mm_nt(a, b, USE_DOT: tl.constexpr, IEEE: tl.constexpr):
    """a (M, K) times b (N, K) transposed -> (M, N) in fp32."""
    if USE_DOT:
        if IEEE:
            out = tl.dot(a, tl.trans(b), input_precision="ieee")
        else:
            out = tl.dot(a, tl.trans(b))
    else:
        out = tl.sum(a.to(tl.float32)[:, None, :] * b.to(tl.float32)[None, :, :], axis=2)
    return out


@triton.jit
def _mm_nn(a, b, USE_DOT: tl.constexpr, IEEE: tl.constexpr):
    """a (M, K) times b (K, N) -> (M, N) in fp32."""
    if USE_DOT:
        if IEEE:
            out = tl.dot(a, b, input_precision="ieee")
        else:
            out = tl.dot(a, b)
    else:
        out = tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    return out


@triton.jit
def _mm_tn(a, b, IEEE: tl.constexpr):
    """a (K, M) transposed times b (K, N) -> (M, N) in fp32 (backward only, always tl.dot)."""
    if IEEE:
        out = tl.dot(tl.trans(a), b, input_precision="ieee")
    else:
        out = tl.dot(tl.trans(a), b)
    return out


@triton.jit
def _attention_probs(
    q, u, w, k, rel_ptr, stride_rr, offs_d, d_ok, dist_ptr, allowed_ptr, pos_ptr, offs_t, offs_s, t_ok, s_ok,
    b, R, scale,
    stride_db, stride_dt, stride_ds, stride_ab, stride_at, stride_as,
    BLOCK_R: tl.constexpr, R_CHUNK: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr,
):
    """Softmax of the masked relative-position scores of one block of queries: (BLOCK_T, BLOCK_S).

    Writes the block's rows of the position table P (pos_ptr, BLOCK_R floats per query), and also
    returns each query's log-sum-exp of the scores (+inf for a query that sees no key), from which
    the backward recomputes the probabilities.
    """
    query_content = q + u[None, :]  # (BLOCK_T, BLOCK_D)
    content = _mm_nt(query_content.to(k.dtype), k, USE_DOT, IEEE)  # (BLOCK_T, BLOCK_S)
    # P[i, r] = (q_i + v) . rel_pos[r]: every distance, R_CHUNK rows of rel_pos at a time (the whole
    # table at once where the products run on tensor cores; CUDA-core products hold their operands in
    # registers and spill with all 64), then one gathered read per key.
    pos_rows = pos_ptr + offs_t[:, None] * BLOCK_R
    query_position = (q + w[None, :]).to(k.dtype)
    for r0 in tl.static_range(0, BLOCK_R, R_CHUNK):
        offs_r = r0 + tl.arange(0, R_CHUNK)
        rel = tl.load(rel_ptr + offs_r[:, None] * stride_rr + offs_d[None, :],
                      mask=(offs_r < R)[:, None] & d_ok[None, :], other=0.0).to(k.dtype)  # (R_CHUNK, BLOCK_D)
        tl.store(pos_rows + offs_r[None, :], _mm_nt(query_position, rel, USE_DOT, IEEE))  # (BLOCK_T, R_CHUNK)
    # Make the scratch row written by every thread of the program visible to the others.
    tl.debug_barrier()
    ts_ok = t_ok[:, None] & s_ok[None, :]
    dist = tl.load(dist_ptr + b * stride_db + offs_t[:, None] * stride_dt + offs_s[None, :] * stride_ds,
                   mask=ts_ok, other=0)
    # As the reference: distances are clamped into the table (masked keys may carry any value).
    dist = tl.minimum(tl.maximum(dist, 0), R - 1).to(tl.int32)
    position = tl.load(pos_rows + dist)  # (BLOCK_T, BLOCK_S)
    allowed = tl.load(allowed_ptr + b * stride_ab + offs_t[:, None] * stride_at + offs_s[None, :] * stride_as,
                      mask=ts_ok, other=0)
    allowed = (allowed != 0) & ts_ok
    scores = tl.where(allowed, (content + position) * scale, float("-inf"))
    row_max = tl.max(scores, axis=1)
    # A row with no visible key (only padding rows, in our use) gets zero weights, not NaN.
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    probs = tl.exp(scores - row_max[:, None])
    denom = tl.sum(probs, axis=1)
    probs = probs / tl.where(denom == 0.0, 1.0, denom)[:, None]
    lse = tl.where(denom == 0.0, float("inf"), row_max + tl.log(tl.where(denom == 0.0, 1.0, denom)))
    return probs, lse


@triton.jit
def _dropout_keep(seed_ptr, pid_bh, query, key, T, S, dropout_p):
    """Keep-mask of dropout for one tile: a Philox draw per (trajectory, head, query, key), so the
    backward's key-major tiles (query and key broadcast the other way round) draw the same mask."""
    seed = tl.load(seed_ptr)
    return tl.rand(seed, (pid_bh * T + query) * S + key) >= dropout_p


@triton.jit
def _rel_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, rel_ptr, u_ptr, w_ptr, dist_ptr, allowed_ptr, seed_ptr, pos_ptr, out_ptr, lse_ptr,
    kn_ptr, vn_ptr, slots_ptr,
    T, S, R, H, T_PAD, scale, dropout_p,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_rr, stride_rh, stride_uh, stride_wh,
    stride_db, stride_dt, stride_ds,
    stride_ab, stride_at, stride_as,
    stride_ob, stride_ot, stride_oh,
    stride_knb, stride_knt, stride_knh,
    stride_vnb, stride_vnt, stride_vnh,
    D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr, R_CHUNK: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr,
    DROPOUT: tl.constexpr, N_NEW: tl.constexpr, SAVE_LSE: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    t_ok = offs_t < T
    s_ok = offs_s < S
    d_ok = offs_d < D

    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_t[:, None] * stride_qt + offs_d[None, :],
                mask=t_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # (BLOCK_T, BLOCK_D)
    u = tl.load(u_ptr + h * stride_uh + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + h * stride_wh + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_s[:, None] * stride_ks + offs_d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_S, BLOCK_D)
    v = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_s[:, None] * stride_vs + offs_d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    if N_NEW > 0:
        # A cached step: the new tokens' keys and values replace their slots of the tile just read
        # (so no program depends on another's write), and the first query block writes them to
        # the cache for the next step.
        write = d_ok & ((tl.program_id(1) + 0 * offs_d) == 0)  # a vector mask: the interpreter wants one
        for j in tl.static_range(N_NEW):
            slot = tl.load(slots_ptr + j)
            k_row = tl.load(kn_ptr + b * stride_knb + j * stride_knt + h * stride_knh + offs_d, mask=d_ok, other=0.0)
            v_row = tl.load(vn_ptr + b * stride_vnb + j * stride_vnt + h * stride_vnh + offs_d, mask=d_ok, other=0.0)
            in_slot = (offs_s == slot)[:, None]
            k = tl.where(in_slot, k_row[None, :], k)
            v = tl.where(in_slot, v_row[None, :], v)
            tl.store(k_ptr + b * stride_kb + h * stride_kh + slot * stride_ks + offs_d, k_row, mask=write)
            tl.store(v_ptr + b * stride_vb + h * stride_vh + slot * stride_vs + offs_d, v_row, mask=write)

    probs, lse = _attention_probs(
        q, u, w, k, rel_ptr + h * stride_rh, stride_rr, offs_d, d_ok, dist_ptr, allowed_ptr,
        pos_ptr + pid_bh.to(tl.int64) * T_PAD * BLOCK_R, offs_t, offs_s, t_ok, s_ok, b, R, scale,
        stride_db, stride_dt, stride_ds, stride_ab, stride_at, stride_as,
        BLOCK_R, R_CHUNK, USE_DOT, IEEE)
    if SAVE_LSE:
        tl.store(lse_ptr + pid_bh.to(tl.int64) * T_PAD + offs_t, lse)
    if DROPOUT:
        keep = _dropout_keep(seed_ptr, pid_bh, offs_t[:, None], offs_s[None, :], T, S, dropout_p)
        probs = tl.where(keep, probs / (1.0 - dropout_p), 0.0)
    out = _mm_nn(probs.to(v.dtype), v, USE_DOT, IEEE)  # (BLOCK_T, BLOCK_D)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_t[:, None] * stride_ot + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])


@triton.jit
def _rel_attention_bwd_kernel(
    q_ptr, k_ptr, v_ptr, u_ptr, dist_ptr, allowed_ptr, seed_ptr, pos_ptr, lse_ptr, delta_ptr, dout_ptr,
    dq_ptr, dk_ptr, dv_ptr, dpos_ptr,
    T, S, R, H, T_PAD, scale, dropout_p,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_uh,
    stride_db, stride_dt, stride_ds,
    stride_ab, stride_at, stride_as,
    stride_gb, stride_gt, stride_gh,
    D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr, IEEE: tl.constexpr, DROPOUT: tl.constexpr,
):
    """One program per (trajectory, head, block of keys), looping over blocks of queries.

    The score tiles are key-major (keys of the block x queries of the block); with all 64 keys held
    through the loop, or with dq computed head-dim-major (k^T dscore), the sm_80 TF32 build spills
    (the compile check's ptxas log). Reads the forward's position table P (pos_ptr, T_PAD
    rows of BLOCK_R per (trajectory, head)) and log-sum-exp (lse_ptr), and delta_i = dout_i . out_i
    (delta_ptr, (B, T, H)); writes dk and dv, and adds with atomics (other key blocks share the
    queries) dq of the content term (fp32, zeroed by the caller) and the gradient of the position
    table dP[i, r] = sum over keys j with dist(i, j) = r of dscore(i, j).
    """
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < S
    d_ok = offs_d < D
    sd_ok = s_ok[:, None] & d_ok[None, :]

    u = tl.load(u_ptr + h * stride_uh + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_s[:, None] * stride_ks + offs_d[None, :],
                mask=sd_ok, other=0.0)  # (BLOCK_S, BLOCK_D)
    v = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_s[:, None] * stride_vs + offs_d[None, :],
                mask=sd_ok, other=0.0)
    dk = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    table = pos_ptr + pid_bh.to(tl.int64) * T_PAD * BLOCK_R
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < T
        td_ok = t_ok[:, None] & d_ok[None, :]
        st_ok = s_ok[:, None] & t_ok[None, :]
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_t[:, None] * stride_qt + offs_d[None, :],
                    mask=td_ok, other=0.0).to(tl.float32)
        query_content = (q + u[None, :]).to(k.dtype)  # (BLOCK_T, BLOCK_D)
        dout = tl.load(dout_ptr + b * stride_gb + h * stride_gh + offs_t[:, None] * stride_gt + offs_d[None, :],
                       mask=td_ok, other=0.0).to(k.dtype)
        lse = tl.load(lse_ptr + pid_bh.to(tl.int64) * T_PAD + offs_t, mask=t_ok, other=float("inf"))
        delta = tl.load(delta_ptr + (b * T + offs_t) * H + h, mask=t_ok, other=0.0)

        content = _mm_nt(k, query_content, True, IEEE)  # (BLOCK_S, BLOCK_T)
        dist = tl.load(dist_ptr + b * stride_db + offs_t[None, :] * stride_dt + offs_s[:, None] * stride_ds,
                       mask=st_ok, other=0)
        dist = tl.minimum(tl.maximum(dist, 0), R - 1).to(tl.int32)  # clamped as the forward does
        position = tl.load(table + offs_t[None, :] * BLOCK_R + dist, mask=st_ok, other=0.0)
        allowed = tl.load(allowed_ptr + b * stride_ab + offs_t[None, :] * stride_at + offs_s[:, None] * stride_as,
                          mask=st_ok, other=0)
        scores = tl.where((allowed != 0) & st_ok, (content + position) * scale, float("-inf"))
        probs = tl.exp(scores - lse[None, :])  # (BLOCK_S, BLOCK_T): the forward's probabilities
        if DROPOUT:
            keep = _dropout_keep(seed_ptr, pid_bh, offs_t[None, :], offs_s[:, None], T, S, dropout_p)
            dropped = tl.where(keep, probs / (1.0 - dropout_p), 0.0)
        else:
            dropped = probs
        dv += _mm_nn(dropped.to(k.dtype), dout, True, IEEE)  # (BLOCK_S, BLOCK_D)
        ddropped = _mm_nt(v, dout, True, IEEE)  # (BLOCK_S, BLOCK_T)
        if DROPOUT:
            dprobs = tl.where(keep, ddropped / (1.0 - dropout_p), 0.0)
        else:
            dprobs = ddropped
        # Softmax backward; with dropout sum_j dP'_ij P'_ij = dout_i . out_i = delta_i.
        dscore = probs * (dprobs - delta[None, :]) * scale       # d loss / d (content + position)
        dk += _mm_nn(dscore.to(k.dtype), query_content, True, IEEE)  # (BLOCK_S, BLOCK_D)
        dq = _mm_tn(dscore.to(k.dtype), k, IEEE)  # (BLOCK_T, BLOCK_D): this block's share of dq
        tl.atomic_add(dq_ptr + ((b * T + offs_t[:, None]) * H + h) * D + offs_d[None, :], dq,
                      mask=td_ok, sem="relaxed")
        tl.atomic_add(dpos_ptr + pid_bh.to(tl.int64) * T * R + offs_t[None, :] * R + dist, dscore,
                      mask=st_ok, sem="relaxed")
    kv_offs = ((b * S + offs_s[:, None]) * H + h) * D + offs_d[None, :]
    tl.store(dk_ptr + kv_offs, dk.to(dk_ptr.dtype.element_ty), mask=sd_ok)
    tl.store(dv_ptr + kv_offs, dv.to(dv_ptr.dtype.element_ty), mask=sd_ok)


def _block(n: int) -> int:
    return max(triton.next_power_of_2(n), MIN_DOT_SIZE)


def _check_inputs(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, dropout_p):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, T, H, D), (B, S, H, D), (B, S, H, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    S = k.shape[1]
    if k.shape != (B, S, H, D) or v.shape != (B, S, H, D):
        raise ValueError(f"k and v must be (B={B}, S, H={H}, D={D}) alike; got {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if rel_pos.dim() != 3 or rel_pos.shape[1:] != (H, D):
        raise ValueError(f"rel_pos must be (R, H={H}, D={D}); got {tuple(rel_pos.shape)}")
    for name, bias in (("u_bias", u_bias), ("v_bias", v_bias)):
        if bias.shape != (H, D):
            raise ValueError(f"{name} must be (H={H}, D={D}); got {tuple(bias.shape)}")
    if dist.shape not in ((T, S), (B, T, S)):
        raise ValueError(f"dist must be (T={T}, S={S}) or (B={B}, T, S); got {tuple(dist.shape)}")
    if dist.dtype.is_floating_point or dist.dtype == torch.bool:
        raise ValueError(f"dist must be an integer tensor; got {dist.dtype}")
    if allowed.shape != (B, T, S) or allowed.dtype != torch.bool:
        raise ValueError(f"allowed must be a bool (B={B}, T={T}, S={S}) tensor; got {allowed.dtype} "
                         f"{tuple(allowed.shape)}")
    if q.dtype not in _FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {_FLOAT_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, t in (("rel_pos", rel_pos), ("u_bias", u_bias), ("v_bias", v_bias)):
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be floating point; got {t.dtype}")
    devices = {t.device for t in (q, k, v, rel_pos, u_bias, v_bias, dist, allowed)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device; got {sorted(map(str, devices))}")
    named = (("q", q), ("k", k), ("v", v), ("rel_pos", rel_pos), ("u_bias", u_bias), ("v_bias", v_bias))
    for name, t in named:
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last (head_dim) dimension; got strides "
                             f"{t.stride()}")
    if S > MAX_KEYS or rel_pos.shape[0] > MAX_DISTANCES or D > MAX_HEAD_DIM:
        raise ValueError(f"the kernel holds one tile of at most {MAX_KEYS} keys, {MAX_DISTANCES} distances "
                         f"and head_dim {MAX_HEAD_DIM}; got S={S}, R={rel_pos.shape[0]}, D={D}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")
    if dropout_p > 0 and B * H * T * S > MAX_DROPOUT_ELEMENTS:
        raise ValueError(f"dropout indexes B*H*T*S = {B * H * T * S} elements with int32; at most "
                         f"{MAX_DROPOUT_ELEMENTS}")


def _check_new_kv(k_cache, k_new, v_new, slots):
    B, S, H, D = k_cache.shape
    n = k_new.shape[1] if k_new.dim() == 4 else -1
    if k_new.dim() != 4 or k_new.shape != (B, n, H, D) or v_new.shape != (B, n, H, D):
        raise ValueError(f"k_new and v_new must be (B={B}, n, H={H}, D={D}) alike; got {tuple(k_new.shape)}, "
                         f"{tuple(v_new.shape)}")
    if not 1 <= n <= MAX_NEW_TOKENS:
        raise ValueError(f"a cached step appends 1 to {MAX_NEW_TOKENS} tokens; got {n}")
    if k_new.dtype != k_cache.dtype or v_new.dtype != k_cache.dtype:
        raise ValueError(f"k_new and v_new must have the cache's dtype {k_cache.dtype}; got {k_new.dtype}, "
                         f"{v_new.dtype}")
    if k_new.stride(-1) != 1 or v_new.stride(-1) != 1:
        raise ValueError("k_new and v_new must have a contiguous last (head_dim) dimension")
    if slots.shape != (n,) or slots.dtype != torch.int64 or slots.device != k_cache.device:
        raise ValueError(f"slots must be an int64 ({n},) tensor on {k_cache.device}; got {slots.dtype} "
                         f"{tuple(slots.shape)} on {slots.device}")
    if {k_new.device, v_new.device} != {k_cache.device}:
        raise ValueError("k_new, v_new and the cache must be on one device")


def _dist_strides(dist):
    return (0, *dist.stride()) if dist.dim() == 2 else dist.stride()


def _seed_arg(seed, dropout_p, dist):
    if dropout_p == 0:
        return dist  # any integer pointer: the kernel reads the seed only when DROPOUT is on
    if seed is None or seed.numel() != 1 or seed.dtype != torch.int64 or seed.device != dist.device:
        raise ValueError("dropout_p > 0 needs seed: a one-element int64 tensor on the inputs' device")
    return seed


class ForwardSaved(NamedTuple):
    """What the forward keeps for the backward (`rel_attention_fwd(..., save=True)`)."""

    position: torch.Tensor  # (B * H, T_PAD, BLOCK_R) fp32: P[i, r] = (q_i + v) . rel_pos[r]
    lse: torch.Tensor       # (B * H, T_PAD) fp32: log-sum-exp of each query's scores


def rel_attention_fwd(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p=0.0, seed=None,
                      out=None, num_warps=None, query_block=None, new_kv=None, save=False):
    """Forward of relative-position attention (no autograd). See `rel_attention` for the shapes.

    seed: (1,) int64 tensor keying the dropout mask; needed only when dropout_p > 0.
    out: optional (B, T, H, D) output of q's dtype to write into (its last dimension contiguous).
    num_warps, query_block: tuning overrides (queries per program, a power of two; from 16 up the
        products run on tensor cores), swept by benches/gpu_report.py.
    new_kv: optional (k_new, v_new, slots) of a cached step: k_new, v_new (B, n, H, D) are written
        into k and v (the cache) at slots (n,) int64, and attended to, in the same kernel.
    save: also return the ForwardSaved the backward needs: (out, saved).
    """
    _check_inputs(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, dropout_p)
    k_new, v_new, slots = new_kv if new_kv is not None else (q, q, dist)  # any pointers when unused
    if new_kv is not None:
        _check_new_kv(k, k_new, v_new, slots)
    B, T, H, D = q.shape
    S, R = k.shape[1], rel_pos.shape[0]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must be a {q.dtype} {tuple(q.shape)} tensor on {q.device} with a contiguous "
                         f"last dimension; got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
    if query_block is None:
        query_block = triton.next_power_of_2(T) if T <= FMA_MAX_QUERIES else QUERY_BLOCK
    if query_block != triton.next_power_of_2(query_block):
        raise ValueError(f"query_block must be a power of two; got {query_block}")
    block_t, use_dot = query_block, query_block >= MIN_DOT_SIZE
    n_t_blocks = triton.cdiv(T, block_t)
    t_pad = n_t_blocks * block_t
    block_s, block_r, block_d = _block(S), _block(R), _block(D)
    # The position table: a scratch buffer read back by the same program, kept when saved.
    position = torch.empty(B * H, t_pad, block_r, dtype=torch.float32, device=q.device)
    lse = torch.empty(B * H, t_pad, dtype=torch.float32, device=q.device) if save else position
    seed = _seed_arg(seed, dropout_p, dist)
    ieee = ieee_fp32(q.dtype)
    if num_warps is None:
        num_warps = FWD_IEEE_NUM_WARPS if use_dot and ieee else FWD_NUM_WARPS
    _rel_attention_fwd_kernel[(B * H, n_t_blocks)](
        q, k, v, rel_pos, u_bias, v_bias, dist, allowed.view(torch.uint8), seed, position, out, lse,
        k_new, v_new, slots,
        T, S, R, H, t_pad, float(scale), float(dropout_p),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        rel_pos.stride(0), rel_pos.stride(1), u_bias.stride(0), v_bias.stride(0),
        *_dist_strides(dist), *allowed.stride(),
        out.stride(0), out.stride(1), out.stride(2),
        k_new.stride(0), k_new.stride(1), k_new.stride(2),
        v_new.stride(0), v_new.stride(1), v_new.stride(2),
        D=D, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_R=block_r, BLOCK_D=block_d,
        R_CHUNK=block_r if use_dot and not ieee else MIN_DOT_SIZE, USE_DOT=use_dot, IEEE=ieee, DROPOUT=dropout_p > 0,
        N_NEW=0 if new_kv is None else k_new.shape[1], SAVE_LSE=save,
        num_warps=num_warps,
    )
    return (out, ForwardSaved(position, lse)) if save else out


def rel_attention_bwd(grad_out, q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p=0.0,
                      seed=None, out=None, saved=None, num_warps=None):
    """Gradients of `rel_attention_fwd` for the upstream gradient grad_out (B, T, H, D).

    out, saved: the forward's output and ForwardSaved (`rel_attention_fwd(..., save=True)`); when
    not given, the forward runs here first. The same seed as the forward reproduces its dropout
    mask. Returns dq, dk, dv, drel_pos, du_bias, dv_bias in the dtypes of their inputs.
    """
    _check_inputs(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, dropout_p)
    B, T, H, D = q.shape
    S, R = k.shape[1], rel_pos.shape[0]
    if grad_out.shape != q.shape or grad_out.stride(-1) != 1:
        raise ValueError(f"grad_out must be {tuple(q.shape)} with a contiguous last dimension; got "
                         f"{tuple(grad_out.shape)} strides {grad_out.stride()}")
    if saved is None:
        out, saved = rel_attention_fwd(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p, seed,
                                       save=True)
    if out is None or out.shape != q.shape:
        raise ValueError(f"out must be the forward's (B, T, H, D) output {tuple(q.shape)} with its saved tensors")
    block_s, block_r, block_d = BWD_KEY_BLOCK, _block(R), _block(D)
    t_pad = saved.lse.shape[1]
    if saved.position.shape != (B * H, t_pad, block_r) or saved.lse.shape[0] != B * H:
        raise ValueError("saved must be the ForwardSaved of the forward of these inputs")
    # delta_i = dout_i . out_i: the softmax backward's row sum, in one reduction up front.
    delta = torch.linalg.vecdot(grad_out.float(), out.float())                       # (B, T, H)
    dq_content = torch.zeros(B, T, H, D, dtype=torch.float32, device=q.device)
    dk = torch.empty(B, S, H, D, dtype=k.dtype, device=q.device)
    dv = torch.empty(B, S, H, D, dtype=v.dtype, device=q.device)
    dposition = torch.zeros(B, H, T, R, dtype=torch.float32, device=q.device)
    seed = _seed_arg(seed, dropout_p, dist)
    _rel_attention_bwd_kernel[(B * H, triton.cdiv(S, block_s))](
        q, k, v, u_bias, dist, allowed.view(torch.uint8), seed, saved.position, saved.lse, delta, grad_out,
        dq_content, dk, dv, dposition,
        T, S, R, H, t_pad, float(scale), float(dropout_p),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        u_bias.stride(0),
        *_dist_strides(dist), *allowed.stride(),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        D=D, BLOCK_T=QUERY_BLOCK, BLOCK_S=block_s, BLOCK_R=block_r, BLOCK_D=block_d,
        IEEE=ieee_fp32(q.dtype), DROPOUT=dropout_p > 0,
        num_warps=num_warps or BWD_NUM_WARPS,
    )
    # The position term (q_i + v) . rel_pos[r] is a small GEMM per head: two more GEMMs give its gradients.
    dq_position = torch.einsum("bhtr,rhd->bthd", dposition, rel_pos.float())          # (B, T, H, D)
    drel = torch.einsum("bhtr,bthd->rhd", dposition, q.float() + v_bias.float())      # (R, H, D)
    dq = (dq_content + dq_position).to(q.dtype)
    return (dq, dk, dv, drel.to(rel_pos.dtype), dq_content.sum((0, 1)).to(u_bias.dtype),
            dq_position.sum((0, 1)).to(v_bias.dtype))


class RelAttention(torch.autograd.Function):
    """Relative-position attention with gradients for q, k, v, rel_pos, u_bias and v_bias."""

    @staticmethod
    def forward(ctx, q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p, seed):
        out, saved = rel_attention_fwd(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p, seed,
                                       save=True)
        ctx.save_for_backward(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, seed, out, *saved)
        ctx.scale, ctx.dropout_p = scale, dropout_p
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel_pos, u_bias, v_bias, dist, allowed, seed, out, position, lse = ctx.saved_tensors
        grads = rel_attention_bwd(grad_out.contiguous(), q, k, v, rel_pos, u_bias, v_bias, dist, allowed,
                                  ctx.scale, ctx.dropout_p, seed, out, ForwardSaved(position, lse))
        grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)]
        return (*grads, None, None, None, None, None)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def rel_attention(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p=0.0):
    """Relative-position multi-head attention, the fast twin of `rel_attention_ref`.

    Args:
        q: (B, T, H, D) queries; k, v: (B, S, H, D) keys and values (any strides with a contiguous
            head_dim, e.g. views of a fused qkv projection or of a (B, S, H, D) K/V cache).
        rel_pos: (R, H, D) projected relative encodings, row d for distance d.
        u_bias, v_bias: (H, D) content and position biases.
        dist: (T, S) or (B, T, S) integer distances, clamped to [0, R - 1].
        allowed: (B, T, S) bool, True where query i may see key j.
        scale: multiplies the scores.
        dropout_p: dropout on the attention probabilities; the mask is drawn from a seed taken from
            torch's generator on q's device, so it differs from the reference's mask (same law).
    Returns:
        (B, T, H, D) in q's dtype. Differentiable (q, k, v, rel_pos, u_bias, v_bias).
    """
    # A head_dim with a stride (rare: a transposed view) is copied once; every other layout is read in place.
    q, k, v, rel_pos, u_bias, v_bias = (t if t.stride(-1) == 1 else t.contiguous()
                                        for t in (q, k, v, rel_pos, u_bias, v_bias))
    seed = None
    if dropout_p > 0:
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=q.device)
    if _needs_grad(q, k, v, rel_pos, u_bias, v_bias):
        return RelAttention.apply(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p, seed)
    return rel_attention_fwd(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p, seed)


def rel_attention_unsupported(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p=0.0):
    """Why the kernel cannot run these (valid) arguments, or None when it can."""
    T, S, D = q.shape[1], k.shape[1], q.shape[-1]
    if S > MAX_KEYS:
        return f"{S} keys exceed the kernel's one tile of {MAX_KEYS}"
    if rel_pos.shape[0] > MAX_DISTANCES:
        return f"{rel_pos.shape[0]} relative distances exceed the kernel's tile of {MAX_DISTANCES}"
    if D > MAX_HEAD_DIM:
        return f"head_dim {D} exceeds {MAX_HEAD_DIM}"
    if q.dtype not in _FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v must share one of {_FLOAT_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
    if any(t.dtype not in _FLOAT_DTYPES for t in (rel_pos, u_bias, v_bias)):
        return f"rel_pos, u_bias, v_bias must be among {_FLOAT_DTYPES}"
    if interpreted() and torch.bfloat16 in (q.dtype, rel_pos.dtype, u_bias.dtype, v_bias.dtype):
        return "bfloat16 needs a GPU: the Triton interpreter has no bfloat16"
    if dropout_p > 0 and q.shape[0] * q.shape[2] * T * S > MAX_DROPOUT_ELEMENTS:
        return "dropout offsets would overflow int32"
    return None


def rel_attention_step(q, k_new, v_new, k_cache, v_cache, slots, rel_pos, u_bias, v_bias, dist, allowed, scale):
    """One cached imagination step in one kernel: write the new tokens' keys and values into the K/V
    cache and attend over it; the fast twin of `rel_attention_step_ref` (forward only).

    q, k_new, v_new: (B, n, H, D) the new tokens' projections (views of a fused qkv projection);
    k_cache, v_cache: (B, S, H, D), written in place at slots (n,) int64 (e.g. views of one
    (B, S, 2, H, D) ring); the rest as `rel_attention`. Returns (B, n, H, D).
    """
    return rel_attention_fwd(q, k_cache, v_cache, rel_pos, u_bias, v_bias, dist, allowed, scale,
                             new_kv=(k_new, v_new, slots))


def rel_attention_step_unsupported(q, k_new, v_new, k_cache, v_cache, slots, rel_pos, u_bias, v_bias, dist,
                                   allowed, scale):
    """Why the kernel cannot run these (valid) arguments, or None when it can."""
    if _needs_grad(q, k_new, v_new, k_cache, v_cache, rel_pos, u_bias, v_bias):
        return "the cached step has no backward; an input requires grad"
    if k_new.shape[1] > MAX_NEW_TOKENS:
        return f"a cached step of the kernel appends at most {MAX_NEW_TOKENS} tokens; got {k_new.shape[1]}"
    if k_new.dtype != k_cache.dtype or v_new.dtype != k_cache.dtype:
        return "k_new and v_new must have the cache's dtype"
    return rel_attention_unsupported(q, k_cache, v_cache, rel_pos, u_bias, v_bias, dist, allowed, scale)
