"""The fused sampler (`categorical_sample_fwd`, `categorical_sample_bwd`, `CategoricalSample`) vs its twin.

The one-hot sample must equal the reference's exactly for the same noise, in every dtype (the
kernel rounds where PyTorch rounds); probabilities, log-probabilities and entropy are compared with
tolerances; the draws pass a chi-square test.
"""

import pytest
import torch
from twm_fast.kernels import categorical as kernel
from twm_fast.kernels.categorical import CategoricalSample, categorical_sample_bwd, categorical_sample_fwd

from twm_fast.reference import categorical_sample_ref
from twm_fast.testing import assert_fp32_close_or_within_bf16_bound, compiled_only, kernel_devices

COMPILED = compiled_only()
DEVICES = kernel_devices()
# Uniform noise of 0 (fp16 rounds small draws to 0, and the edge test feeds it) gives log(0) = -inf in
# both paths, as the reference does; the interpreter's numpy says so.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
MODES = ["sample", "straight_through", "argmax"]
# (logits dtype, noise dtype, atol, rtol) for probs, log_probs and entropy. The interpreter has no
# bf16; fp16 exercises the same rounding emulation on the CPU.
DTYPES = [
    (torch.float32, torch.float32, 1e-6, 1e-5),
    (torch.float16, torch.float16, 2e-3, 2e-3),
    (torch.float32, torch.float16, 1e-6, 1e-5),
    (torch.float16, torch.float32, 2e-3, 2e-3),
]


def make_logits(N, V, C, dtype=torch.float32, noise_dtype=torch.float32, device="cpu"):
    logits = (3 * torch.randn(N, V, C, device=device)).to(dtype)
    noise = torch.rand(N, V, C, device=device).to(noise_dtype)
    return logits, noise


def assert_same_sample(onehot, ref_onehot, mode):
    """Exactly the reference's one-hot; in straight-through mode the reference's forward value is
    onehot + probs - probs, one-hot up to rounding, and the kernel's is the exact one-hot."""
    if mode == "straight_through":
        assert torch.equal(onehot.argmax(-1), ref_onehot.argmax(-1))
        hard = torch.nn.functional.one_hot(onehot.argmax(-1), onehot.shape[-1]).to(onehot.dtype)
        assert torch.equal(onehot, hard)
    else:
        assert torch.equal(onehot, ref_onehot)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, noise_dtype, atol, rtol", DTYPES)
# The latents (32 x 32), odd sizes, the actor's actions (one categorical of 18).
@pytest.mark.parametrize("N, V, C", [(64, 32, 32), (5, 3, 7), (37, 1, 18)])
def test_forward_matches_reference(device, mode, dtype, noise_dtype, atol, rtol, N, V, C):
    logits, noise = make_logits(N, V, C, dtype, noise_dtype, device)
    onehot, probs, log_probs, entropy = categorical_sample_fwd(logits, noise, mode)
    ref = categorical_sample_ref(logits, noise, mode)
    assert_same_sample(onehot, ref[0], mode)
    for out, expected in zip((probs, log_probs, entropy), ref[1:]):
        assert out.dtype == dtype
        torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("noise_dtype", [torch.float32, torch.float16])
def test_noise_at_the_edges_clamps_as_the_reference(device, noise_dtype):
    logits, _ = make_logits(8, 4, 32, device=device)
    noise = torch.rand(8, 4, 32, device=device)
    noise[0] = 0.0
    noise[1] = 1.0
    noise[2, :, ::2] = 1e-30
    noise[3, :, ::3] = 1.0 - 1e-9
    noise = noise.to(noise_dtype)
    for mode in ("sample", "straight_through"):
        onehot, *_ = categorical_sample_fwd(logits, noise, mode)
        assert_same_sample(onehot, categorical_sample_ref(logits, noise, mode)[0], mode)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_take_the_first_class(device):
    logits = torch.zeros(3, 2, 8, device=device)
    logits[1, :, 5:] = 1.0
    onehot, *_ = categorical_sample_fwd(logits, None, "argmax")
    assert torch.equal(onehot.argmax(-1), torch.tensor([[0, 0], [5, 5], [0, 0]], device=device))
    assert torch.equal(onehot, categorical_sample_ref(logits, None, "argmax")[0])


@pytest.mark.parametrize("device", DEVICES)
def test_draws_follow_the_probabilities(device):
    # scipy is a test extra, not a dependency: the GPU machine has none, and the other tests here run without it.
    stats = pytest.importorskip("scipy.stats")
    C, draws = 32, 16_384
    logits = torch.randn(C, device=device)
    expanded = logits.expand(draws // 32, 32, C).contiguous()                 # draws categoricals, one law
    onehot, probs, _, _ = categorical_sample_fwd(expanded, torch.rand_like(expanded), "sample")
    counts = onehot.sum((0, 1)).double().cpu()
    expected = probs[0, 0].double().cpu()
    expected = expected / expected.sum() * draws
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_forward_writes_every_element_of_poisoned_outputs(device):
    logits, noise = make_logits(7, 32, 32, device=device)
    out = tuple(torch.full(shape, float("nan"), device=device) for shape in ((7, 32, 32),) * 3 + ((7, 32),))
    result = categorical_sample_fwd(logits, noise, "sample", out=out)
    assert all(r.data_ptr() == o.data_ptr() for r, o in zip(result, out))
    ref = categorical_sample_ref(logits, noise, "sample")
    assert torch.equal(out[0], ref[0])
    for o, expected in zip(out[1:], ref[1:]):
        torch.testing.assert_close(o, expected, atol=1e-6, rtol=1e-5)


# ---- backward --------------------------------------------------------------------------------------
USED_OUTPUTS = {  # which outputs the loss reads: every combination the models use, and all at once
    "all": (0, 1, 2, 3),
    "onehot": (0,),               # the latent z into the decoder/dynamics (straight-through)
    "entropy": (3,),              # the entropy hinge (SPEC 2)
    "log_probs": (2,),            # the consistency cross-entropy
    "probs_and_entropy": (1, 3),
}


def _gradient(fn, logits, noise, mode, upstream, used):
    leaf = logits.detach().clone().requires_grad_()
    outputs = fn(leaf, noise, mode)
    terms = [(outputs[i] * upstream[i]).sum() for i in used if outputs[i].requires_grad]
    if not terms:
        return None
    sum(terms).backward()
    return leaf.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("used", list(USED_OUTPUTS))
@pytest.mark.parametrize("N, V, C", [(6, 32, 32), (5, 3, 7)])
def test_gradients_match_reference(device, mode, used, N, V, C):
    logits, noise = make_logits(N, V, C, device=device)
    upstream = [torch.randn(N, V, C, device=device) for _ in range(3)] + [torch.randn(N, V, device=device)]
    fast = _gradient(CategoricalSample.apply, logits, noise, mode, upstream, USED_OUTPUTS[used])
    expected = _gradient(categorical_sample_ref, logits, noise, mode, upstream, USED_OUTPUTS[used])
    if expected is None:                       # only the (non-differentiable) sample was used
        assert fast is None
    else:
        torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_carry_gradients_as_the_reference(device):
    logits, noise = make_logits(2, 3, 4, device=device)
    logits.requires_grad_()
    for mode in MODES:
        fast = [t.requires_grad for t in kernel.categorical_sample(logits, noise, mode)]
        assert fast == [t.requires_grad for t in categorical_sample_ref(logits, noise, mode)]
    with torch.no_grad():
        assert not any(t.requires_grad for t in kernel.categorical_sample(logits, noise, "straight_through"))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_launcher_accepts_missing_gradients(device):
    logits, _ = make_logits(3, 2, 5, device=device)
    grad = categorical_sample_bwd(logits, None, None, None, torch.ones(3, 2, device=device))
    leaf = logits.clone().requires_grad_()
    categorical_sample_ref(leaf, None, "argmax")[3].sum().backward()
    torch.testing.assert_close(grad, leaf.grad, atol=1e-6, rtol=1e-5)


# ---- argument checks -------------------------------------------------------------------------------
def test_launcher_rejects_bad_arguments():
    logits, noise = make_logits(2, 3, 4)
    with pytest.raises(ValueError, match="unknown mode"):
        categorical_sample_fwd(logits, noise, "mean")
    with pytest.raises(ValueError, match="needs uniform noise"):
        categorical_sample_fwd(logits, None, "sample")
    with pytest.raises(ValueError, match="noise must be"):
        categorical_sample_fwd(logits, noise[:, :2], "sample")
    with pytest.raises(ValueError, match="logits must be contiguous"):
        categorical_sample_fwd(logits.transpose(0, 1), noise.transpose(0, 1), "sample")
    with pytest.raises(ValueError, match=r"logits must be \(N, V, C\)"):
        categorical_sample_fwd(logits[0], noise[0], "sample")
    with pytest.raises(ValueError, match="logits must be one of"):
        categorical_sample_fwd(logits.double(), noise, "sample")
    with pytest.raises(ValueError, match="out probs must be"):
        categorical_sample_fwd(logits, noise, "sample", out=(torch.empty(2, 3, 4), torch.empty(2, 3, 5),
                                                            torch.empty(2, 3, 4), torch.empty(2, 3)))


def test_unsupported_names_what_the_kernel_cannot_honour():
    logits, noise = make_logits(2, 3, 4)
    assert kernel.categorical_sample_unsupported(logits, noise, "sample") is None
    assert kernel.categorical_sample_unsupported(logits, None, "argmax") is None
    assert "bfloat16" in kernel.categorical_sample_unsupported(logits.bfloat16(), noise, "sample")
    assert "float64" in kernel.categorical_sample_unsupported(logits.double(), noise, "sample")
    wide = torch.randn(1, 1, kernel.MAX_CLASSES + 1)
    assert kernel.categorical_sample_unsupported(wide, torch.rand_like(wide), "sample") is not None


# ---- full size on a GPU ----------------------------------------------------------------------------
def gpu_only(test):
    return pytest.mark.gpu(COMPILED(test))


FULL_SIZES = [(12_000, 32, 32), (800, 32, 32)]  # an imagination batch (800 x 15) and one step


@gpu_only
@pytest.mark.parametrize("dtype, noise_dtype", [(torch.float32, torch.float32),
                                                (torch.bfloat16, torch.bfloat16),
                                                (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("N, V, C", FULL_SIZES)
def test_full_size_forward_on_gpu(N, V, C, mode, dtype, noise_dtype):
    logits, noise = make_logits(N, V, C, dtype, noise_dtype, "cuda")
    fast = categorical_sample_fwd(logits, noise, mode)
    ref_lowp = categorical_sample_ref(logits, noise, mode)
    assert_same_sample(fast[0], ref_lowp[0], mode)
    ref_fp32 = categorical_sample_ref(logits.float(), noise, mode)
    for name, a, b, c in zip(("probs", "log_probs", "entropy"), fast[1:], ref_lowp[1:], ref_fp32[1:]):
        assert_fp32_close_or_within_bf16_bound(name, a, b, c, dtype, fp32_tol=1e-5)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["straight_through", "sample"])
def test_full_size_gradients_on_gpu(mode, dtype):
    N, V, C = FULL_SIZES[0]
    logits, noise = make_logits(N, V, C, dtype, dtype, "cuda")
    upstream = [torch.randn(N, V, C, device="cuda", dtype=dtype) for _ in range(3)] + \
        [torch.randn(N, V, device="cuda", dtype=dtype)]
    used = USED_OUTPUTS["all"]
    fast = _gradient(CategoricalSample.apply, logits, noise, mode, upstream, used)
    ref_lowp = _gradient(categorical_sample_ref, logits, noise, mode, upstream, used)
    ref_fp32 = _gradient(categorical_sample_ref, logits.float(), noise, mode, [u.float() for u in upstream],
                         used)
    assert_fp32_close_or_within_bf16_bound("dlogits", fast, ref_lowp, ref_fp32, dtype, fp32_tol=1e-5)


@gpu_only
def test_cuda_graph_replay_draws_fresh_samples():
    logits, noise = make_logits(800, 32, 32, device="cuda")
    out = categorical_sample_fwd(logits, noise, "sample")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        categorical_sample_fwd(logits, noise, "sample", out=out)
    fresh_logits, fresh_noise = make_logits(800, 32, 32, device="cuda")
    logits.copy_(fresh_logits)
    noise.copy_(fresh_noise)
    graph.replay()
    assert torch.equal(out[0], categorical_sample_ref(fresh_logits, fresh_noise, "sample")[0])
