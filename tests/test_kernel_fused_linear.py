"""The fused linear kernel (`fused_linear_fwd`) against its twin `fused_linear_ref`.

On a CPU the kernel runs in the Triton interpreter (tiny shapes, fp32); the `gpu` tests run it
compiled at the sizes of an imagination step, in fp32 and bf16 (run them with TRITON_INTERPRET=0).
"""

import pytest
import torch
import torch.nn.functional as F
from twm_fast.kernels import fused_linear as kernel
from twm_fast.kernels.fused_linear import fused_linear_fwd

from twm_fast.reference import fused_linear_ref
from twm_fast.testing import (assert_fp32_close_or_within_bf16_bound, assert_within_twice_the_reference_error,
                              compiled_only, kernel_devices, matmul_precision)

COMPILED = compiled_only()
DEVICES = kernel_devices()
# The epilogues the models use: a plain projection, a head layer (SiLU in), a hidden MLP layer
# (SiLU out), both, and a post-norm sublayer (residual + LayerNorm), with and without a bias.
EPILOGUES = {
    "plain": dict(),
    "input_silu": dict(input_silu=True),
    "output_silu": dict(output_silu=True),
    "both_silu": dict(input_silu=True, output_silu=True),
    "residual_norm": dict(norm=True),
    "silu_residual_norm": dict(output_silu=True, norm=True),
}


def make_inputs(lead, K, N, bias=True, norm=False, dtype=torch.float32, device="cpu"):
    """x (*lead, K), an nn.Linear-like weight (N, K) and bias, and for the norm a residual and affine
    LayerNorm parameters away from the identity (so that a missing gamma or beta shows)."""
    x = torch.randn(*lead, K, device=device)
    weight = torch.randn(N, K, device=device) / K ** 0.5
    tensors = {"x": x, "weight": weight, "bias": torch.randn(N, device=device) if bias else None}
    if norm:
        tensors.update(residual=torch.randn(*lead, N, device=device),
                       norm_weight=1 + 0.5 * torch.randn(N, device=device),
                       norm_bias=0.5 * torch.randn(N, device=device))
    return {name: None if t is None else t.to(dtype) for name, t in tensors.items()}


def run(fn, tensors, input_silu=False, output_silu=False, eps=1e-5, **kwargs):
    return fn(tensors["x"], tensors["weight"], tensors["bias"], tensors.get("residual"),
              tensors.get("norm_weight"), tensors.get("norm_bias"), eps, input_silu, output_silu, **kwargs)


def split(epilogue):
    flags = dict(EPILOGUES[epilogue])
    return flags.pop("norm", False), flags


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("lead, K, N", [
    ((5,), 16, 16),          # smaller than one tile of rows
    ((2, 3), 24, 40),        # odd widths: padded reduction and features, (B, T, .) input
    ((37,), 64, 48),         # rows across three programs
    ((4, 3), 16, 160),       # features across two blocks (without the norm)
])
def test_forward_matches_reference(device, epilogue, lead, K, N):
    norm, flags = split(epilogue)
    tensors = make_inputs(lead, K, N, norm=norm, device=device)
    fast = run(fused_linear_fwd, tensors, **flags)
    assert fast.shape == (*lead, N) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, run(fused_linear_ref, tensors, **flags), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", [False, True])
def test_without_bias(device, norm):
    tensors = make_inputs((7,), 32, 16, bias=False, norm=norm, device=device)
    torch.testing.assert_close(run(fused_linear_fwd, tensors), run(fused_linear_ref, tensors), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_norm_epsilon_is_honoured(device):
    """Rows of tiny values (variance about 1e-8): the epsilon dominates the variance."""
    tensors = make_inputs((6,), 16, 32, norm=True, device=device)
    tensors["weight"] = tensors["weight"] * 1e-4
    tensors["residual"] = torch.zeros_like(tensors["residual"])
    tensors["bias"] = torch.zeros_like(tensors["bias"])
    for eps in (1e-5, 1e-2):
        torch.testing.assert_close(run(fused_linear_fwd, tensors, eps=eps),
                                   run(fused_linear_ref, tensors, eps=eps), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_reads_strided_rows_and_writes_every_element_of_a_poisoned_out(device):
    """The transformer passes (B, T, H * D) attention outputs and column slices of wider tensors."""
    tensors = make_inputs((3, 4), 16, 32, norm=True, device=device)
    tensors["x"] = torch.randn(3, 4, 40, device=device)[..., 4:20]             # row stride 40
    tensors["residual"] = torch.randn(3, 4, 64, device=device)[..., ::2]      # feature stride 2
    out = torch.full((3, 4, 32), float("nan"), device=device)
    assert run(fused_linear_fwd, tensors, out=out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, run(fused_linear_ref, tensors), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_rows, num_warps", [(16, 2), (32, 4), (64, 8)])
def test_tuning_overrides_change_only_the_speed(device, block_rows, num_warps):
    tensors = make_inputs((70,), 32, 48, device=device)
    fast = run(fused_linear_fwd, tensors, output_silu=True, block_rows=block_rows, num_warps=num_warps)
    torch.testing.assert_close(fast, run(fused_linear_ref, tensors, output_silu=True), atol=1e-5, rtol=1e-5)


def test_equals_the_module_composition_it_replaces():
    """The twin is the models' own layers: Linear, SiLU, and LayerNorm(residual + y)."""
    torch.manual_seed(0)
    linear, norm = torch.nn.Linear(24, 16), torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x, residual = torch.randn(5, 24), torch.randn(5, 16)
    expected = norm(residual + F.silu(linear(F.silu(x))))
    got = fused_linear_ref(x, linear.weight, linear.bias, residual, norm.weight, norm.bias, norm.eps, True, True)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_launcher_rejects_bad_arguments():
    t = make_inputs((4,), 16, 8, norm=True)
    x, w, b, r, g, beta = t["x"], t["weight"], t["bias"], t["residual"], t["norm_weight"], t["norm_bias"]
    with pytest.raises(ValueError, match="in_features=16"):
        fused_linear_fwd(torch.randn(4, 12), w, b)
    with pytest.raises(ValueError, match="weight must be"):
        fused_linear_fwd(x, w[0], b)
    with pytest.raises(ValueError, match="bias must be"):
        fused_linear_fwd(x, w, torch.randn(9))
    with pytest.raises(ValueError, match="go together"):
        fused_linear_fwd(x, w, b, r)
    with pytest.raises(ValueError, match="residual must be"):
        fused_linear_fwd(x, w, b, torch.randn(5, 8), g, beta)
    with pytest.raises(ValueError, match="share one of"):
        fused_linear_fwd(x.double(), w, b)
    with pytest.raises(ValueError, match="out must be"):
        fused_linear_fwd(x, w, b, out=torch.empty(4, 9))
    with pytest.raises(ValueError, match="block_rows"):
        fused_linear_fwd(x, w, b, block_rows=8)
    with pytest.raises(ValueError, match="go together"):
        fused_linear_ref(x, w, b, r)
    wide = make_inputs((2,), 16, kernel.MAX_NORM_WIDTH + 1, norm=True)
    with pytest.raises(ValueError, match="at most"):
        run(fused_linear_fwd, wide)


def test_unsupported_names_what_the_kernel_cannot_honour():
    t = make_inputs((4,), 16, 8, norm=True)
    args = (t["x"], t["weight"], t["bias"], t["residual"], t["norm_weight"], t["norm_bias"])
    assert kernel.fused_linear_unsupported(*args) is None
    needs_grad = (t["x"], t["weight"].clone().requires_grad_(), *args[2:])
    assert "no backward" in kernel.fused_linear_unsupported(*needs_grad)
    with torch.no_grad():
        assert kernel.fused_linear_unsupported(*needs_grad) is None           # imagination: no grad mode
    bf16 = tuple(a.bfloat16() for a in args)
    assert "bfloat16" in kernel.fused_linear_unsupported(*bf16)
    wide = make_inputs((2,), 16, kernel.MAX_NORM_WIDTH + 1, norm=True)
    assert "at most" in kernel.fused_linear_unsupported(*wide.values())


# ---- full size on a GPU ----------------------------------------------------------------------------
def gpu_only(test):
    return pytest.mark.gpu(COMPILED(test))


# The layers of one imagination step at paper size, M = 800 (3 tokens per trajectory in the
# transformer, one row per trajectory in the heads and the actor).
FULL_SIZES = {
    "out_proj+norm": dict(lead=(800, 3), K=256, N=256, bias=False, epilogue="residual_norm"),
    "linear1+silu": dict(lead=(800, 3), K=256, N=1024, bias=True, epilogue="output_silu"),
    "linear2+norm": dict(lead=(800, 3), K=1024, N=256, bias=True, epilogue="residual_norm"),
    "z_head_in": dict(lead=(800,), K=256, N=512, bias=True, epilogue="both_silu"),
    "z_head_out": dict(lead=(800,), K=512, N=1024, bias=True, epilogue="plain"),
    "reward_head_out": dict(lead=(800,), K=256, N=1, bias=True, epilogue="plain"),
}


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", list(FULL_SIZES))
def test_full_size_on_gpu(size, dtype):
    spec = dict(FULL_SIZES[size])
    norm, flags = split(spec.pop("epilogue"))
    tensors = make_inputs(norm=norm, dtype=dtype, device="cuda", **spec)
    fast = run(fused_linear_fwd, tensors, **flags)
    assert fast.dtype == dtype
    ref_lowp = run(fused_linear_ref, tensors, **flags)
    ref_fp32 = run(fused_linear_ref, {k: None if v is None else v.float() for k, v in tensors.items()}, **flags)
    assert_fp32_close_or_within_bf16_bound(size, fast, ref_lowp, ref_fp32, dtype)


@gpu_only
@pytest.mark.parametrize("size", list(FULL_SIZES))
def test_full_size_tf32_within_twice_the_tf32_reference_error(size):
    """config.matmul_precision="high" (the GPU default): the kernel's TF32 products against cuBLAS's."""
    spec = dict(FULL_SIZES[size])
    norm, flags = split(spec.pop("epilogue"))
    tensors = make_inputs(norm=norm, dtype=torch.float32, device="cuda", **spec)
    with matmul_precision("highest"):
        ref_fp32 = run(fused_linear_ref, tensors, **flags)
    with matmul_precision("high"):
        ref_tf32, fast = run(fused_linear_ref, tensors, **flags), run(fused_linear_fwd, tensors, **flags)
    assert_within_twice_the_reference_error(size, fast, ref_tf32, ref_fp32, "tf32")


@gpu_only
def test_cuda_graph_replay_equals_eager():
    """No host sync in the launcher: a captured layer replays with fresh inputs."""
    static = make_inputs((800, 3), 256, 256, norm=True, device="cuda")
    out = torch.empty(800, 3, 256, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run(fused_linear_fwd, static, out=out)                                 # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(fused_linear_fwd, static, out=out)
    fresh = make_inputs((800, 3), 256, 256, norm=True, device="cuda")
    for name, t in static.items():
        t.copy_(fresh[name])
    graph.replay()
    torch.testing.assert_close(out, run(fused_linear_fwd, fresh), atol=0, rtol=0)
