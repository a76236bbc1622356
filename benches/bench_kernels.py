"""Kernel benchmarks: each Triton kernel paired with its plain-PyTorch twin, one group per op.

    pytest benches --benchmark-only -k bench_kernels

On a GPU both sides run at full size (SPEC 5: M = 800 imagined trajectories, B = 100 windows of
50 tokens). On a CPU only the reference side runs, at small shapes: the Triton interpreter is a
correctness tool, not something to time. `benches/gpu_report.py` reuses the input builders below
for its one-call correctness + timing report.
"""
import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="the Triton side is timed on a GPU only")
SCALE = 1 / 16          # 1/sqrt(256), SPEC 3
DROPOUT = 0.1           # SPEC 3, training only
LAMBDA = 0.95           # SPEC 1
# Full size on a GPU, small on a CPU (the reference alone).
STEP_M = 800 if CUDA else 16          # imagination trajectories; one step adds 3 tokens to 53 cached keys
TRAIN_B = 100 if CUDA else 4          # world-model windows of 50 tokens
SAMPLER_N = 12_000 if CUDA else 200   # 800 x 15 imagined latents of 32 x 32
GAE_N = 800 if CUDA else 100
LINEAR_ROWS = 2_400 if CUDA else 48   # 800 trajectories x 3 tokens of an imagination step


def attention_inputs(B, T, S, R, dtype=torch.float32, device=DEVICE, H=4, D=64):
    """Queries are the last T of S token positions; trajectory b starts an episode at position b % S.

    Returns (q, k, v, rel_pos, u_bias, v_bias), dist (T, S), allowed (B, T, S)."""
    q = torch.randn(B, T, H, D, device=device)
    k, v = torch.randn(B, S, H, D, device=device), torch.randn(B, S, H, D, device=device)
    rel_pos, u_bias, v_bias = (torch.randn(R, H, D, device=device), torch.randn(H, D, device=device),
                               torch.randn(H, D, device=device))
    key_pos = torch.arange(S, device=device)
    query_pos = torch.arange(S - T, S, device=device)
    dist = query_pos[:, None] - key_pos[None, :]
    start = torch.arange(B, device=device)[:, None, None] % S
    allowed = (dist >= 0)[None] & ((key_pos[None, None, :] >= start) | (query_pos[None, :, None] < start))
    tensors = tuple(t.to(dtype) for t in (q, k, v, rel_pos, u_bias, v_bias))
    return tensors, dist, allowed


def sampler_inputs(N, dtype=torch.float32, device=DEVICE):
    """Logits (N, 32, 32) of the latent head and uniform noise of the same shape and dtype."""
    logits = 3 * torch.randn(N, 32, 32, device=device)
    return logits.to(dtype), torch.rand(N, 32, 32, device=device).to(dtype)


def rollout_inputs(N, H=15, dtype=torch.float32, device=DEVICE):
    """Rewards (N, H), predicted discounts (N, H), values (N, H + 1) of an imagined rollout."""
    rewards = torch.randn(N, H, device=device)
    discounts = 0.99 * torch.rand(N, H, device=device)
    values = torch.randn(N, H + 1, device=device)
    return tuple(t.to(dtype) for t in (rewards, discounts, values))


def linear_inputs(rows, K, N, dtype=torch.float32, device=DEVICE):
    """The post-norm sublayer's arguments: x (rows, K), weight (N, K), bias, residual (rows, N) and
    the LayerNorm's affine parameters, in fused_linear's argument order (eps 1e-5)."""
    tensors = (torch.randn(rows, K, device=device), torch.randn(N, K, device=device) / K ** 0.5,
               torch.randn(N, device=device), torch.randn(rows, N, device=device),
               1 + 0.1 * torch.randn(N, device=device), 0.1 * torch.randn(N, device=device))
    return tuple(t.to(dtype) for t in tensors)


def synchronized(fn):
    """Time the device work, not the launch: wait for the GPU after each call."""
    def call():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out
    return call


def _attention_grads(fn, leaves, dist, allowed, upstream):
    for t in leaves:
        t.grad = None
    fn(*leaves, dist, allowed, SCALE, DROPOUT).backward(upstream)


# ---- relative attention, one imagination step ------------------------------------------------------
@pytest.fixture(scope="module")
def step_inputs():
    return attention_inputs(STEP_M, 3, 53, 53)


@pytest.mark.benchmark(group=f"rel_attention step M={STEP_M} T=3 S=53")
def test_rel_attention_step_reference(benchmark, step_inputs):
    from twm_fast.reference import rel_attention_ref
    tensors, dist, allowed = step_inputs
    benchmark(synchronized(lambda: rel_attention_ref(*tensors, dist, allowed, SCALE)))


@needs_cuda
@pytest.mark.benchmark(group=f"rel_attention step M={STEP_M} T=3 S=53")
def test_rel_attention_step_triton(benchmark, step_inputs):
    from twm_fast.kernels.rel_attention import rel_attention_fwd
    tensors, dist, allowed = step_inputs
    out = torch.empty_like(tensors[0])
    benchmark(synchronized(lambda: rel_attention_fwd(*tensors, dist, allowed, SCALE, out=out)))


# ---- relative attention, one imagination step with its K/V cache write ------------------------------
def cached_step_inputs():
    """The step as the dynamics model runs it: q, k_new, v_new as views of one (M, 3, 3, H, D)
    projection, the cache as views of one (M, 53, 2, H, D) ring, the new tokens at slots 51, 52, 0."""
    (_, _, _, *pos), dist, allowed = attention_inputs(STEP_M, 3, 53, 53)
    qkv = torch.randn(STEP_M, 3, 3, 4, 64, device=DEVICE)
    ring = torch.randn(STEP_M, 53, 2, 4, 64, device=DEVICE)
    slots = torch.tensor([51, 52, 0], device=DEVICE)
    return (qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], ring[:, :, 0], ring[:, :, 1], slots, *pos, dist, allowed,
            SCALE)


@pytest.mark.benchmark(group=f"rel_attention_step (cache write + attend) M={STEP_M} n=3 S=53")
def test_rel_attention_cached_step_reference(benchmark):
    from twm_fast.reference import rel_attention_step_ref
    args = cached_step_inputs()
    benchmark(synchronized(lambda: rel_attention_step_ref(*args)))


@needs_cuda
@pytest.mark.benchmark(group=f"rel_attention_step (cache write + attend) M={STEP_M} n=3 S=53")
def test_rel_attention_cached_step_triton(benchmark):
    from twm_fast.kernels.rel_attention import rel_attention_step
    args = cached_step_inputs()
    benchmark(synchronized(lambda: rel_attention_step(*args)))


# ---- relative attention, training window forward + backward ------------------------------------------
@pytest.fixture(scope="module")
def train_inputs():
    tensors, dist, allowed = attention_inputs(TRAIN_B, 50, 50, 53)
    return [t.requires_grad_() for t in tensors], dist, allowed, torch.randn_like(tensors[0])


@pytest.mark.benchmark(group=f"rel_attention train fwd+bwd B={TRAIN_B} T=S=50 dropout")
def test_rel_attention_train_reference(benchmark, train_inputs):
    from twm_fast.reference import rel_attention_ref
    leaves, dist, allowed, upstream = train_inputs
    benchmark(synchronized(lambda: _attention_grads(rel_attention_ref, leaves, dist, allowed, upstream)))


@needs_cuda
@pytest.mark.benchmark(group=f"rel_attention train fwd+bwd B={TRAIN_B} T=S=50 dropout")
def test_rel_attention_train_triton(benchmark, train_inputs):
    from twm_fast.kernels.rel_attention import rel_attention
    leaves, dist, allowed, upstream = train_inputs
    benchmark(synchronized(lambda: _attention_grads(rel_attention, leaves, dist, allowed, upstream)))


# ---- categorical sampler --------------------------------------------------------------------------------
@pytest.mark.benchmark(group=f"categorical_sample N={SAMPLER_N} V=32 C=32")
def test_categorical_sample_reference(benchmark):
    from twm_fast.reference import categorical_sample_ref
    logits, noise = sampler_inputs(SAMPLER_N)
    benchmark(synchronized(lambda: categorical_sample_ref(logits, noise, "sample")))


@needs_cuda
@pytest.mark.benchmark(group=f"categorical_sample N={SAMPLER_N} V=32 C=32")
def test_categorical_sample_triton(benchmark):
    from twm_fast.kernels.categorical import categorical_sample_fwd
    logits, noise = sampler_inputs(SAMPLER_N)
    out = categorical_sample_fwd(logits, noise, "sample")
    benchmark(synchronized(lambda: categorical_sample_fwd(logits, noise, "sample", out=out)))


# ---- GAE ----------------------------------------------------------------------------------------------
@pytest.mark.benchmark(group=f"gae N={GAE_N} H=15")
def test_gae_reference(benchmark):
    from twm_fast.reference import gae_ref
    rollout = rollout_inputs(GAE_N)
    benchmark(synchronized(lambda: gae_ref(*rollout, LAMBDA)))


@needs_cuda
@pytest.mark.benchmark(group=f"gae N={GAE_N} H=15")
def test_gae_triton(benchmark):
    from twm_fast.kernels.gae import gae_fwd
    rollout = rollout_inputs(GAE_N)
    out = torch.empty(GAE_N, 15, device=DEVICE)
    benchmark(synchronized(lambda: gae_fwd(*rollout, LAMBDA, out=out)))


# ---- discount reset -----------------------------------------------------------------------------------
def discount_reset_inputs(M=GAE_N):
    """One imagination step's discount logits, restart flags, cumulative discounts, sampled one-hot
    latents (32 x 32) and a pool of M restart latents."""
    next_z = torch.nn.functional.one_hot(torch.randint(0, 32, (M, 32), device=DEVICE), 32).float().flatten(1)
    return (3 * torch.randn(M, device=DEVICE), torch.rand(M, device=DEVICE) < 0.3, torch.rand(M, device=DEVICE),
            next_z, next_z.roll(1, 0).contiguous(), torch.randint(0, M, (M,), device=DEVICE), 0.1)


@pytest.mark.benchmark(group=f"discount_reset M={GAE_N} Z=1024")
def test_discount_reset_reference(benchmark):
    from twm_fast.reference import discount_reset_ref
    args = discount_reset_inputs()
    benchmark(synchronized(lambda: discount_reset_ref(*args)))


@needs_cuda
@pytest.mark.benchmark(group=f"discount_reset M={GAE_N} Z=1024")
def test_discount_reset_triton(benchmark):
    from twm_fast.kernels.discount_reset import discount_reset
    args = discount_reset_inputs()
    benchmark(synchronized(lambda: discount_reset(*args)))


# ---- episode mask -------------------------------------------------------------------------------------
def episode_mask_inputs(B=GAE_N):
    """The last step of a paper-size rollout: token 47 of the 53-slot ring, a third of the episodes new."""
    from twm_fast.models.dynamics import DynamicsModel
    from twm_fast.testing import tiny_config

    dynamics = DynamicsModel(tiny_config(memory_length=16), num_actions=3).to(DEVICE)
    _, key_token, _, in_window = dynamics._step_layout(47, dynamics.step_windows)
    return (torch.randint(0, 48, (B,), device=DEVICE), torch.rand(B, device=DEVICE) < 0.3, key_token, in_window,
            48, 1)


@pytest.mark.benchmark(group=f"episode_mask B={GAE_N} n=3 S=53")
def test_episode_mask_reference(benchmark):
    from twm_fast.reference import episode_mask_ref
    args = episode_mask_inputs()
    benchmark(synchronized(lambda: episode_mask_ref(*args)))


@needs_cuda
@pytest.mark.benchmark(group=f"episode_mask B={GAE_N} n=3 S=53")
def test_episode_mask_triton(benchmark):
    from twm_fast.kernels.episode_mask import episode_mask
    args = episode_mask_inputs()
    benchmark(synchronized(lambda: episode_mask(*args)))


# ---- fused linear ---------------------------------------------------------------------------------------
# linear2 of a transformer layer in an imagination step: 1024 -> 256, bias, residual, LayerNorm.
@pytest.mark.benchmark(group=f"fused_linear linear2+residual+norm rows={LINEAR_ROWS} 1024->256")
def test_fused_linear_reference(benchmark):
    from twm_fast.reference import fused_linear_ref
    args = linear_inputs(LINEAR_ROWS, 1024, 256)
    with torch.no_grad():
        benchmark(synchronized(lambda: fused_linear_ref(*args)))


@needs_cuda
@pytest.mark.benchmark(group=f"fused_linear linear2+residual+norm rows={LINEAR_ROWS} 1024->256")
def test_fused_linear_triton(benchmark):
    from twm_fast.kernels.fused_linear import fused_linear_fwd
    args = linear_inputs(LINEAR_ROWS, 1024, 256)
    out = torch.empty(LINEAR_ROWS, 256, device=DEVICE)
    benchmark(synchronized(lambda: fused_linear_fwd(*args, out=out)))
