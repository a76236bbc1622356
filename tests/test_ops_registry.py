"""The dispatch point: every op has a twin and, with a fast path, a kernel test; the backend choice."""
import inspect
import os
from pathlib import Path

import pytest
import torch

from twm_fast import ops
from twm_fast.ops import REGISTRY, OpEntry, implementation

TESTS = Path(__file__).parent
# Every op with a fast path names the test module that holds its kernel to its twin.
KERNEL_TESTS = {
    "rel_attention": "test_kernel_rel_attention.py",
    "rel_attention_step": "test_kernel_rel_attention.py",
    "categorical_sample": "test_kernel_categorical.py",
    "gae": "test_kernel_gae.py",
    "fused_linear": "test_kernel_fused_linear.py",
    "discount_reset": "test_kernel_discount_reset.py",
    "episode_mask": "test_kernel_episode_mask.py",
}


def small_args(name, keys=8, requires_grad=False):
    if name == "rel_attention":
        B, T, H, D = 2, 3, 2, 16
        q = torch.randn(B, T, H, D, requires_grad=requires_grad)
        dist = torch.arange(keys - T, keys)[:, None] - torch.arange(keys)[None, :]
        return (q, torch.randn(B, keys, H, D), torch.randn(B, keys, H, D), torch.randn(keys, H, D),
                torch.randn(H, D), torch.randn(H, D), dist, (dist >= 0)[None].repeat(B, 1, 1), 0.25, 0.0)
    if name == "rel_attention_step":
        q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, _ = small_args("rel_attention", keys, requires_grad)
        new = torch.randn(2, 3, 2, 16)
        return (q, new, new.clone(), k, v, torch.tensor([keys - 3, keys - 2, keys - 1]), rel_pos, u_bias, v_bias,
                dist, allowed, scale)
    if name == "categorical_sample":
        logits = torch.randn(3, 4, 5, requires_grad=requires_grad)
        return logits, torch.rand(3, 4, 5), "sample"
    if name == "gae":
        return torch.randn(3, 4, requires_grad=requires_grad), torch.rand(3, 4), torch.randn(3, 5), 0.95
    if name == "episode_mask":
        key_token = torch.arange(-2, 6)
        in_window = torch.rand(3, 8) < 0.7
        return torch.randint(0, 4, (5,)), torch.rand(5) < 0.3, key_token, in_window, 4, 1
    if name == "discount_reset":
        next_z = torch.eye(4)[torch.randint(0, 4, (5,))]
        return (torch.randn(5, requires_grad=requires_grad), torch.rand(5) < 0.3, torch.rand(5), next_z,
                torch.eye(4)[:2], torch.randint(0, 2, (5,)), 0.1)
    if name == "fused_linear":
        x = torch.randn(5, 16, requires_grad=requires_grad)
        return (x, torch.randn(24, 16), torch.randn(24), torch.randn(5, 24), torch.rand(24) + 0.5, torch.randn(24),
                1e-5, True, True)
    raise KeyError(name)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_op_has_a_reference_and_its_fast_path_a_kernel_test(name):
    entry = REGISTRY[name]
    assert callable(entry.reference)
    assert entry.reference.__name__ == f"{name}_ref"
    public = getattr(ops, name)
    assert list(inspect.signature(public).parameters) == list(inspect.signature(entry.reference).parameters)
    if entry.fast is None:
        return
    fast = ops._load(entry.fast)
    assert callable(fast)
    assert list(inspect.signature(fast).parameters) == list(inspect.signature(entry.reference).parameters)
    assert entry.unsupported is not None and callable(ops._load(entry.unsupported))
    assert name in KERNEL_TESTS, f"op {name!r} has a fast path but no kernel test module is named for it"
    test_file = TESTS / KERNEL_TESTS[name]
    assert test_file.exists(), f"{test_file} is missing"
    source = test_file.read_text()
    module = entry.fast.partition(":")[0]
    imports = source.replace("from twm_fast.kernels import ", "twm_fast.kernels.").replace(" as kernel", "")
    assert module in imports, f"{test_file.name} does not import {module}"
    assert f"{name}_ref" in source, f"{test_file.name} does not compare with {name}_ref"


def test_backend_reads_the_environment(monkeypatch):
    monkeypatch.delenv("TWM_FAST_BACKEND", raising=False)
    assert ops.backend() == "auto"
    monkeypatch.setenv("TWM_FAST_BACKEND", "TORCH")
    assert ops.backend() == "torch"
    monkeypatch.setenv("TWM_FAST_BACKEND", "cuda")
    with pytest.raises(ValueError, match="not one of auto, triton, torch"):
        ops.backend()
    with pytest.raises(ValueError, match="not one of"):
        ops.gae(*small_args("gae"))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_auto_and_torch_use_the_reference_on_a_cpu(name, monkeypatch):
    args = small_args(name)
    for choice in ("auto", "torch"):
        monkeypatch.setenv("TWM_FAST_BACKEND", choice)
        assert implementation(name, torch.device("cpu"), args) is REGISTRY[name].reference


@pytest.mark.parametrize("name", list(REGISTRY))
def test_auto_uses_the_kernel_on_cuda_unless_it_cannot_honour_the_arguments(name, monkeypatch):
    """The choice for a CUDA device, decided from shapes alone (no GPU needed to check it)."""
    monkeypatch.setenv("TWM_FAST_BACKEND", "auto")
    cuda = torch.device("cuda")
    assert implementation(name, cuda, small_args(name)) is ops._load(REGISTRY[name].fast)
    if name in ("rel_attention", "rel_attention_step"):
        too_long = small_args(name, keys=100)
        assert implementation(name, cuda, too_long) is REGISTRY[name].reference
    # Forward-only kernels: a call that needs a gradient keeps the reference.
    if name in ("gae", "fused_linear", "rel_attention_step", "discount_reset"):
        needs_grad = small_args(name, requires_grad=True)
        assert implementation(name, cuda, needs_grad) is REGISTRY[name].reference


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the kernels were imported compiled (TRITON_INTERPRET is read at import)")
@pytest.mark.parametrize("name", list(REGISTRY))
def test_triton_runs_the_kernel_through_the_interpreter(name, monkeypatch):
    monkeypatch.setenv("TWM_FAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = small_args(name)
    fast = getattr(ops, name)(*args)
    monkeypatch.setenv("TWM_FAST_BACKEND", "torch")
    ref = getattr(ops, name)(*args)
    for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (fast, ref))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_triton_refuses_a_cpu_tensor_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TWM_FAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        ops.gae(*small_args("gae"))


def test_triton_refuses_arguments_the_kernel_cannot_honour(monkeypatch):
    monkeypatch.setenv("TWM_FAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the CPU is allowed; the arguments are not
    with pytest.raises(RuntimeError, match="cannot run these arguments.*keys"):
        ops.rel_attention(*small_args("rel_attention", keys=100))
    with pytest.raises(RuntimeError, match="no backward"):
        ops.gae(*small_args("gae", requires_grad=True))
    monkeypatch.setenv("TWM_FAST_BACKEND", "auto")
    rewards, discounts, values, lam = small_args("gae", requires_grad=True)
    ops.gae(rewards, discounts, values, lam).sum().backward()  # auto: the reference, with grads
    assert rewards.grad is not None


def test_triton_refuses_an_op_without_a_kernel(monkeypatch):
    monkeypatch.setitem(REGISTRY, "gae", OpEntry(REGISTRY["gae"].reference))
    monkeypatch.setenv("TWM_FAST_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="has no Triton kernel"):
        ops.gae(*small_args("gae"))
    monkeypatch.setenv("TWM_FAST_BACKEND", "auto")
    assert implementation("gae", torch.device("cuda"), small_args("gae")) is REGISTRY["gae"].reference


def test_triton_refuses_when_triton_is_missing(monkeypatch):
    monkeypatch.setattr(ops, "_triton_installed", lambda: False)
    monkeypatch.setenv("TWM_FAST_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        ops.gae(*small_args("gae"))
    monkeypatch.setenv("TWM_FAST_BACKEND", "auto")
    assert implementation("gae", torch.device("cuda"), small_args("gae")) is REGISTRY["gae"].reference
