"""The relative-attention kernel (`rel_attention_fwd`, `rel_attention_bwd`, `RelAttention`) against its twin.

On a CPU the kernels run in the Triton interpreter (tiny shapes); the `gpu` tests run the compiled
kernels at full size in fp32 and bf16 (run them with TRITON_INTERPRET=0).
"""

import pytest
import torch
from twm_fast.kernels import rel_attention as kernel
from twm_fast.kernels.rel_attention import RelAttention, rel_attention_fwd, rel_attention_step

from twm_fast.reference import attention as reference_module
from twm_fast.reference import rel_attention_ref, rel_attention_step_ref
from twm_fast.testing import (assert_fp32_close_or_within_bf16_bound, assert_within_twice_the_reference_error,
                              compiled_only, kernel_devices, matmul_precision)

COMPILED = compiled_only()
DEVICES = kernel_devices()
SCALE = 1 / 16  # 1/sqrt(256), SPEC 3
MASKS = ["full", "self_only", "boundary_everywhere", "random"]


def make_inputs(B, T, S, H, D, R, mask, batched_dist=False, ring=False, dtype=torch.float32, device="cpu"):
    """Queries are the last T of S token positions, as in the imagination cache (T = S in training).

    mask: "full" (every earlier key), "self_only" (empty memory), "boundary_everywhere" (trajectory b
    starts an episode at position b % S, so every position carries a boundary somewhere in the
    batch), "random" (a random subset, always including the query itself).
    ring: the keys sit in a rotated slot order, as in the ring-buffer cache.
    """
    q = torch.randn(B, T, H, D, device=device)
    k, v = torch.randn(B, S, H, D, device=device), torch.randn(B, S, H, D, device=device)
    rel_pos, u_bias, v_bias = torch.randn(R, H, D, device=device), torch.randn(H, D, device=device), \
        torch.randn(H, D, device=device)
    key_pos = torch.arange(S, device=device)
    if ring:
        key_pos = key_pos.roll(S // 3)
    query_pos = torch.arange(S - T, S, device=device)
    dist = query_pos[:, None] - key_pos[None, :]                               # (T, S)
    allowed = (dist >= 0)[None].repeat(B, 1, 1)
    if mask == "self_only":
        allowed &= dist == 0
    elif mask == "boundary_everywhere":
        start = torch.arange(B, device=device)[:, None, None] % S
        allowed &= (key_pos[None, None, :] >= start) | (query_pos[None, :, None] < start)
    elif mask == "random":
        allowed &= (torch.rand(B, T, S, device=device) < 0.5) | (dist == 0)[None]
    if batched_dist:
        dist = dist[None].repeat(B, 1, 1)
        dist[:, :, ::2] += 2  # per-trajectory distances, some past R - 1 (clamped by both paths)
    return (q, k, v, rel_pos, u_bias, v_bias), dist, allowed


def cast(tensors, dtype):
    return tuple(t.to(dtype) for t in tensors)


def max_error(a, b):
    return (a.float() - b.float()).abs().max().item()


# ---- forward ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("B, T, S, H, D, R, batched_dist, ring", [
    (5, 3, 37, 2, 64, 40, False, True),     # an imagination step (3 new tokens), odd cache size
    (4, 2, 9, 1, 64, 9, True, False),       # the first imagination step (z, a) with per-trajectory dist
    (3, 1, 16, 2, 24, 20, False, True),     # one query, an odd head_dim
    (3, 50, 50, 2, 64, 53, False, False),   # a training window
    (2, 19, 23, 3, 32, 17, True, False),    # odd sizes on the tensor-core path, distances clamped
])
def test_forward_matches_reference(device, mask, B, T, S, H, D, R, batched_dist, ring):
    tensors, dist, allowed = make_inputs(B, T, S, H, D, R, mask, batched_dist, ring, device=device)
    out = rel_attention_fwd(*tensors, dist, allowed, SCALE)
    expected = rel_attention_ref(*tensors, dist, allowed, SCALE)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T, query_block", [(3, 16), (20, 4), (20, 32)])
def test_query_block_override_changes_only_the_speed(device, T, query_block):
    """Both product paths (CUDA cores below 16 queries per program, tensor cores from 16) at any T."""
    tensors, dist, allowed = make_inputs(3, T, 37, 2, 32, 40, "random", device=device)
    out = rel_attention_fwd(*tensors, dist, allowed, SCALE, query_block=query_block)
    torch.testing.assert_close(out, rel_attention_ref(*tensors, dist, allowed, SCALE), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_writes_every_element_of_a_poisoned_strided_out(device):
    tensors, dist, allowed = make_inputs(5, 3, 37, 4, 64, 53, "boundary_everywhere", device=device)
    buffer = torch.full((5, 3, 2 * 4, 64), float("nan"), device=device)
    out = buffer[:, :, ::2]                                                    # a strided (B, T, H, D) view
    result = rel_attention_fwd(*tensors, dist, allowed, SCALE, out=out)
    assert result.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, rel_attention_ref(*tensors, dist, allowed, SCALE), atol=2e-5, rtol=2e-5)
    assert torch.isnan(buffer[:, :, 1::2]).all()                             # nothing written outside out


@pytest.mark.parametrize("device", DEVICES)
def test_forward_reads_fused_qkv_views(device):
    """The model splits one qkv projection: q, k, v are strided views of one (B, S, 3, H, D) tensor."""
    B, S, H, D = 3, 20, 2, 32
    (_, _, _, rel_pos, u_bias, v_bias), dist, allowed = make_inputs(B, S, S, H, D, S, "random", device=device)
    q, k, v = torch.randn(B, S, 3, H, D, device=device).unbind(2)
    out = rel_attention_fwd(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, SCALE)
    expected = rel_attention_ref(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, SCALE)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


# ---- cached step: the K/V write fused in -----------------------------------------------------------
def make_step(B, n, S, H, D, R, mask, slots, kv_packed=True, device="cpu"):
    """A cached step: queries and new keys/values as views of one (B, n, 3, H, D) projection, the
    cache as views of one (B, S, 2, H, D) ring (as the dynamics model lays them out)."""
    tensors, dist, allowed = make_inputs(B, n, S, H, D, R, mask, ring=True, device=device)
    qkv = torch.randn(B, n, 3, H, D, device=device)
    ring = torch.randn(B, S, 2, H, D, device=device)
    if not kv_packed:
        ring = ring.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)  # separate K and V tensors
    slots = torch.tensor(slots, device=device)
    return qkv, ring, slots, tensors[3:], dist, allowed


def step_call(fn, qkv, ring, slots, pos, dist, allowed):
    return fn(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], ring[:, :, 0], ring[:, :, 1], slots, *pos, dist, allowed,
              SCALE)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("B, n, S, H, D, R, slots, packed", [
    (5, 3, 37, 2, 64, 40, [10, 11, 12], True),    # a step in the middle of the ring
    (4, 3, 53, 4, 64, 53, [51, 52, 0], True),      # the step that wraps around the ring
    (3, 2, 9, 1, 32, 9, [0, 1], False),            # the first step (z, a), separate K and V tensors
    (2, 1, 16, 2, 24, 20, [7], True),              # one token, odd head_dim
])
def test_step_writes_the_cache_and_attends_as_the_reference(device, mask, B, n, S, H, D, R, slots, packed):
    qkv, ring, slot_index, pos, dist, allowed = make_step(B, n, S, H, D, R, mask, slots, packed, device)
    ring_ref = ring.clone()
    out = step_call(rel_attention_step, qkv, ring, slot_index, pos, dist, allowed)
    expected = step_call(rel_attention_step_ref, qkv, ring_ref, slot_index, pos, dist, allowed)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ring, ring_ref, atol=0, rtol=0)                # the same slots written, exactly
    assert torch.equal(ring[:, slot_index, 0], qkv[:, :, 1]) and torch.equal(ring[:, slot_index, 1], qkv[:, :, 2])


@pytest.mark.parametrize("device", DEVICES)
def test_step_with_several_query_blocks_writes_once_and_reads_the_new_keys(device):
    """query_block 1: three programs per (trajectory, head) read the tile while the first writes."""
    qkv, ring, slots, pos, dist, allowed = make_step(3, 3, 20, 2, 32, 24, "full", [5, 6, 7], device=device)
    ring_ref = ring.clone()
    out = rel_attention_fwd(qkv[:, :, 0], ring[:, :, 0], ring[:, :, 1], *pos, dist, allowed, SCALE, query_block=1,
                            new_kv=(qkv[:, :, 1], qkv[:, :, 2], slots))
    expected = step_call(rel_attention_step_ref, qkv, ring_ref, slots, pos, dist, allowed)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ring, ring_ref, atol=0, rtol=0)


def test_step_rejects_bad_arguments_and_declines_gradients():
    qkv, ring, slots, pos, dist, allowed = make_step(2, 3, 8, 2, 16, 8, "full", [0, 1, 2])
    k_new, v_new, k_cache, v_cache = qkv[:, :, 1], qkv[:, :, 2], ring[:, :, 0], ring[:, :, 1]
    with pytest.raises(ValueError, match="slots must be"):
        rel_attention_step(qkv[:, :, 0], k_new, v_new, k_cache, v_cache, slots[:2], *pos, dist, allowed, SCALE)
    with pytest.raises(ValueError, match="slots must be"):
        rel_attention_step(qkv[:, :, 0], k_new, v_new, k_cache, v_cache, slots.int(), *pos, dist, allowed, SCALE)
    with pytest.raises(ValueError, match="k_new and v_new must be"):
        rel_attention_step(qkv[:, :, 0], k_new[:, :, :1], v_new, k_cache, v_cache, slots, *pos, dist, allowed,
                           SCALE)
    with pytest.raises(ValueError, match="cache's dtype"):
        rel_attention_step(qkv[:, :, 0], k_new.double(), v_new.double(), k_cache, v_cache, slots, *pos, dist,
                           allowed, SCALE)
    args = (qkv[:, :, 0], k_new, v_new, k_cache, v_cache, slots, *pos, dist, allowed, SCALE)
    assert kernel.rel_attention_step_unsupported(*args) is None
    leaf = qkv[:, :, 0].clone().requires_grad_()
    assert "no backward" in kernel.rel_attention_step_unsupported(leaf, *args[1:])


# ---- backward --------------------------------------------------------------------------------------
def _gradients(fn, tensors, dist, allowed, upstream, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves, dist, allowed, SCALE, **kwargs)
    out.backward(upstream)
    return out.detach(), [t.grad for t in leaves]


def _relation(*args, dropout_p=0.0, seed=None):
    return RelAttention.apply(*args, dropout_p, seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", ["boundary_everywhere", "self_only", "random"])
@pytest.mark.parametrize("B, T, S, H, D, R, batched_dist", [
    (5, 3, 37, 2, 16, 40, False),
    (3, 50, 50, 2, 64, 53, False),
    (2, 7, 11, 3, 24, 9, True),
    (1, 45, 60, 1, 16, 8, False),  # three blocks of the backward's query loop, the last one partial
])
def test_gradients_match_reference(device, mask, B, T, S, H, D, R, batched_dist):
    tensors, dist, allowed = make_inputs(B, T, S, H, D, R, mask, batched_dist, device=device)
    upstream = torch.randn(B, T, H, D, device=device)
    out, grads = _gradients(_relation, tensors, dist, allowed, upstream)
    expected_out, expected_grads = _gradients(rel_attention_ref, tensors, dist, allowed, upstream)
    torch.testing.assert_close(out, expected_out, atol=2e-5, rtol=2e-5)
    for name, grad, expected in zip(("q", "k", "v", "rel_pos", "u_bias", "v_bias"), grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_with_distances_shared_by_several_keys(device):
    """dist need not be injective along a row (the atomics in the backward add them up)."""
    tensors, dist, allowed = make_inputs(3, 5, 12, 2, 16, 4, "full", device=device)
    dist = dist.clamp(0, 3)                                                   # many keys share distance 3
    upstream = torch.randn(3, 5, 2, 16, device=device)
    _, grads = _gradients(_relation, tensors, dist, allowed, upstream)
    _, expected_grads = _gradients(rel_attention_ref, tensors, dist, allowed, upstream)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)


# ---- dropout ---------------------------------------------------------------------------------------
def _dropout_mask(tensors, dist, allowed, dropout_p, seed):
    """The kernel's keep-mask (B, H, T, S): with v_j the j-th unit vector the output is the row of
    (dropped) probabilities, so a kept, visible key is exactly a non-zero output."""
    q, k, _, rel_pos, u_bias, v_bias = tensors
    B, S, H, D = k.shape
    assert D >= S
    eye = torch.eye(S, D, device=k.device)[None, :, None, :].expand(B, S, H, D).contiguous()
    rows = rel_attention_fwd(q, k, eye, rel_pos, u_bias, v_bias, dist, allowed, SCALE, dropout_p, seed)
    return (rows[..., :S] != 0).permute(0, 2, 1, 3)                          # (B, H, T, S)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [3, 16])  # the CUDA-core and the tensor-core forward
def test_dropout_matches_reference_with_the_same_mask(device, T, monkeypatch):
    B, S, H, D, p = 4, 16, 2, 16, 0.25
    tensors, dist, allowed = make_inputs(B, T, S, H, D, S, "full", device=device)
    seed = torch.tensor([1234], device=device)
    keep = _dropout_mask(tensors, dist, allowed, p, seed)
    # The reference with its F.dropout replaced by the kernel's mask.
    monkeypatch.setattr(reference_module.F, "dropout", lambda x, p, training: x * keep / (1 - p))
    upstream = torch.randn(B, T, H, D, device=device)
    out, grads = _gradients(_relation, tensors, dist, allowed, upstream, dropout_p=p, seed=seed)
    expected_out, expected_grads = _gradients(rel_attention_ref, tensors, dist, allowed, upstream,
                                              dropout_p=p)
    torch.testing.assert_close(out, expected_out, atol=2e-5, rtol=2e-5)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_keeps_the_right_fraction_and_follows_the_seed(device):
    B, T, S, H, D, p = 8, 16, 16, 4, 16, 0.1
    tensors, dist, allowed = make_inputs(B, T, S, H, D, S, "full", device=device)
    seed = torch.tensor([7], device=device)
    keep = _dropout_mask(tensors, dist, allowed, p, seed)
    visible = allowed[:, None].expand_as(keep)
    kept = keep[visible].float()
    n = kept.numel()
    assert abs(kept.mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5   # 4 sigma of a binomial
    assert torch.equal(keep, _dropout_mask(tensors, dist, allowed, p, seed))
    assert not torch.equal(keep, _dropout_mask(tensors, dist, allowed, p, seed + 1))


@pytest.mark.parametrize("device", DEVICES)
def test_public_entry_draws_its_dropout_seed_from_torch(device):
    tensors, dist, allowed = make_inputs(2, 16, 16, 1, 16, 16, "full", device=device)
    torch.manual_seed(3)
    first = kernel.rel_attention(*tensors, dist, allowed, SCALE, 0.5)
    torch.manual_seed(3)
    assert torch.equal(first, kernel.rel_attention(*tensors, dist, allowed, SCALE, 0.5))
    assert not torch.equal(first, kernel.rel_attention(*tensors, dist, allowed, SCALE, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_public_entry_is_differentiable_only_when_asked(device):
    tensors, dist, allowed = make_inputs(2, 3, 8, 1, 16, 8, "full", device=device)
    assert kernel.rel_attention(*tensors, dist, allowed, SCALE).grad_fn is None
    q = tensors[0].clone().requires_grad_()
    assert kernel.rel_attention(q, *tensors[1:], dist, allowed, SCALE).grad_fn is not None
    with torch.no_grad():
        assert kernel.rel_attention(q, *tensors[1:], dist, allowed, SCALE).grad_fn is None


# ---- argument checks -------------------------------------------------------------------------------
def test_launcher_rejects_bad_arguments():
    tensors, dist, allowed = make_inputs(2, 3, 8, 2, 16, 8, "full")
    q, k, v, rel_pos, u_bias, v_bias = tensors
    with pytest.raises(ValueError, match="k and v must be"):
        rel_attention_fwd(q, k[:, :, :1], v, rel_pos, u_bias, v_bias, dist, allowed, SCALE)
    with pytest.raises(ValueError, match="allowed must be a bool"):
        rel_attention_fwd(*tensors, dist, allowed.int(), SCALE)
    with pytest.raises(ValueError, match="dist must be an integer"):
        rel_attention_fwd(*tensors, dist.float(), allowed, SCALE)
    with pytest.raises(ValueError, match="dist must be"):
        rel_attention_fwd(*tensors, dist[:, :4], allowed, SCALE)
    with pytest.raises(ValueError, match="q, k, v must share"):
        rel_attention_fwd(q.double(), k, v, rel_pos, u_bias, v_bias, dist, allowed, SCALE)
    with pytest.raises(ValueError, match="contiguous last"):
        rel_attention_fwd(q.transpose(2, 3).contiguous().transpose(2, 3), k, v, rel_pos, u_bias, v_bias, dist,
                          allowed, SCALE)
    with pytest.raises(ValueError, match="rel_pos must be"):
        rel_attention_fwd(q, k, v, rel_pos[:, :1], u_bias, v_bias, dist, allowed, SCALE)
    with pytest.raises(ValueError, match="needs seed"):
        rel_attention_fwd(*tensors, dist, allowed, SCALE, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p must be"):
        rel_attention_fwd(*tensors, dist, allowed, SCALE, dropout_p=1.0, seed=torch.tensor([0]))
    with pytest.raises(ValueError, match="out must be"):
        rel_attention_fwd(*tensors, dist, allowed, SCALE, out=torch.empty(2, 3, 2, 8))
    with pytest.raises(ValueError, match="power of two"):
        rel_attention_fwd(*tensors, dist, allowed, SCALE, query_block=12)
    big, big_dist, big_allowed = make_inputs(1, 1, kernel.MAX_KEYS + 1, 1, 16, 8, "full")
    with pytest.raises(ValueError, match="one tile"):
        rel_attention_fwd(*big, big_dist, big_allowed, SCALE)


def test_unsupported_names_what_the_kernel_cannot_honour():
    tensors, dist, allowed = make_inputs(2, 3, 8, 2, 16, 8, "full")
    assert kernel.rel_attention_unsupported(*tensors, dist, allowed, SCALE, 0.1) is None
    big, big_dist, big_allowed = make_inputs(1, 1, kernel.MAX_KEYS + 1, 1, 16, 8, "full")
    assert "keys" in kernel.rel_attention_unsupported(*big, big_dist, big_allowed, SCALE)
    long_window, d, a = make_inputs(1, kernel.MAX_KEYS + 1, kernel.MAX_KEYS + 1, 1, 16, 8, "full")
    assert "keys" in kernel.rel_attention_unsupported(*long_window, d, a, SCALE)
    many_queries, d, a = make_inputs(1, 2 * kernel.MAX_KEYS, 8, 1, 16, 8, "full")  # the backward loops over queries
    assert kernel.rel_attention_unsupported(many_queries[0].requires_grad_(), *many_queries[1:], d, a, SCALE) is None
    q = tensors[0].requires_grad_()
    assert kernel.rel_attention_unsupported(q, *tensors[1:], dist, allowed, SCALE) is None
    bf16 = cast(tensors, torch.bfloat16)
    assert "bfloat16" in kernel.rel_attention_unsupported(*bf16, dist, allowed, SCALE)


# ---- full size on a GPU ----------------------------------------------------------------------------
def gpu_only(test):
    return pytest.mark.gpu(COMPILED(test))


FULL_SIZES = {  # SPEC 3 / 5: an imagination step over M trajectories, and the world-model window
    "imagination_step_800": dict(B=800, T=3, S=53, H=4, D=64, R=53, ring=True),
    "imagination_step_400": dict(B=400, T=3, S=53, H=4, D=64, R=53, ring=True),
    "training_window": dict(B=100, T=50, S=50, H=4, D=64, R=53, ring=False),
}


def _full_inputs(size, mask):
    sizes = dict(FULL_SIZES[size])
    ring = sizes.pop("ring")
    return make_inputs(**sizes, mask=mask, ring=ring, device="cuda")


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("size", list(FULL_SIZES))
def test_full_size_forward_on_gpu(size, mask, dtype):
    tensors, dist, allowed = _full_inputs(size, mask)
    lowp = cast(tensors, dtype)
    ref_fp32 = rel_attention_ref(*cast(lowp, torch.float32), dist, allowed, SCALE)
    ref_lowp = rel_attention_ref(*lowp, dist, allowed, SCALE)
    fast = rel_attention_fwd(*lowp, dist, allowed, SCALE)
    assert fast.dtype == dtype
    assert_fp32_close_or_within_bf16_bound("out", fast, ref_lowp, ref_fp32, dtype)


@gpu_only
@pytest.mark.parametrize("size", list(FULL_SIZES))
def test_full_size_tf32_within_twice_the_tf32_reference_error(size):
    """config.matmul_precision="high" (the GPU default): TF32 products, forward and, in training, gradients."""
    tensors, dist, allowed = _full_inputs(size, "random")
    upstream = torch.randn_like(tensors[0])
    with matmul_precision("highest"):
        out_fp32, grads_fp32 = _gradients(rel_attention_ref, tensors, dist, allowed, upstream)
    with matmul_precision("high"):
        out_tf32, grads_tf32 = _gradients(rel_attention_ref, tensors, dist, allowed, upstream)
        out_fast, grads_fast = _gradients(_relation, tensors, dist, allowed, upstream)
    assert_within_twice_the_reference_error("out", out_fast, out_tf32, out_fp32, "tf32")
    for name, a, b, c in zip(("q", "k", "v", "rel_pos", "u_bias", "v_bias"), grads_fast, grads_tf32, grads_fp32):
        assert_within_twice_the_reference_error(f"d{name}", a, b, c, "tf32")


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", ["boundary_everywhere", "random"])
def test_full_size_gradients_on_gpu(mask, dtype):
    tensors, dist, allowed = _full_inputs("training_window", mask)
    lowp = cast(tensors, dtype)
    upstream = torch.randn_like(lowp[0])
    _, fast = _gradients(_relation, lowp, dist, allowed, upstream)
    _, ref_lowp = _gradients(rel_attention_ref, lowp, dist, allowed, upstream)
    _, ref_fp32 = _gradients(rel_attention_ref, cast(lowp, torch.float32), dist, allowed, upstream.float())
    for name, a, b, c in zip(("q", "k", "v", "rel_pos", "u_bias", "v_bias"), fast, ref_lowp, ref_fp32):
        assert a.dtype == dtype
        assert_fp32_close_or_within_bf16_bound(f"d{name}", a, b, c, dtype)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [800, 400])
def test_full_size_cached_step_on_gpu(M, dtype):
    """The imagination step with its K/V write: 3 new tokens into a 53-slot ring at the wrap-around."""
    qkv, ring, slots, pos, dist, allowed = make_step(M, 3, 53, 4, 64, 53, "boundary_everywhere", [51, 52, 0],
                                                     device="cuda")
    qkv, ring, pos = qkv.to(dtype), ring.to(dtype), cast(pos, dtype)
    ring_lowp, ring_fp32 = ring.clone(), ring.float()
    fast = step_call(rel_attention_step, qkv, ring, slots, pos, dist, allowed)
    ref_lowp = step_call(rel_attention_step_ref, qkv, ring_lowp, slots, pos, dist, allowed)
    ref_fp32 = step_call(rel_attention_step_ref, qkv.float(), ring_fp32, slots, cast(pos, torch.float32), dist,
                         allowed)
    assert torch.equal(ring, ring_lowp)
    assert_fp32_close_or_within_bf16_bound("out", fast, ref_lowp, ref_fp32, dtype)


@gpu_only
def test_cuda_graph_replay_equals_eager():
    """No host sync in the launcher: a captured imagination step replays with fresh inputs."""
    static, dist, allowed = _full_inputs("imagination_step_800", "boundary_everywhere")
    out = torch.empty_like(static[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        rel_attention_fwd(*static, dist, allowed, SCALE, out=out)              # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rel_attention_fwd(*static, dist, allowed, SCALE, out=out)
    fresh, _, _ = _full_inputs("imagination_step_800", "boundary_everywhere")
    for dst, src in zip(static, fresh):
        dst.copy_(src)
    graph.replay()
    torch.testing.assert_close(out, rel_attention_fwd(*fresh, dist, allowed, SCALE), atol=0, rtol=0)
