"""The GAE kernel (`gae_fwd`) against its twin."""

import pytest
import torch
from twm_fast.kernels import gae as kernel
from twm_fast.kernels.gae import gae_fwd

from twm_fast.reference import gae_ref
from twm_fast.testing import compiled_only, kernel_devices

COMPILED = compiled_only()
DEVICES = kernel_devices()
LAMBDA = 0.95  # SPEC 1


def make_rollout(N, H, dtype=torch.float32, device="cpu"):
    """Rewards, predicted discounts (zero after the resets, about one step in five), values."""
    rewards = torch.randn(N, H, device=device)
    discounts = 0.99 * torch.rand(N, H, device=device) * (torch.rand(N, H, device=device) > 0.2)
    values = torch.randn(N, H + 1, device=device)
    return rewards.to(dtype), discounts.to(dtype), values.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N, H", [(37, 15), (5, 1), (130, 15), (3, 4)])  # 130 crosses a program boundary
def test_matches_reference(device, N, H):
    rollout = make_rollout(N, H, device=device)
    torch.testing.assert_close(gae_fwd(*rollout, LAMBDA), gae_ref(*rollout, LAMBDA), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_reads_strided_inputs(device):
    """The actor-critic passes column slices of bigger tensors and transposed views."""
    N, H = 9, 15
    rewards = torch.randn(H, N, device=device).t()                            # (N, H), column-major
    discounts = torch.rand(N, 2 * H, device=device)[:, ::2]
    values = torch.randn(N, H + 3, device=device)[:, 1:H + 2]
    torch.testing.assert_close(gae_fwd(rewards, discounts, values, LAMBDA),
                               gae_ref(rewards, discounts, values, LAMBDA), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_writes_every_element_of_a_poisoned_out(device):
    rollout = make_rollout(33, 15, device=device)
    out = torch.full((33, 15), float("nan"), device=device)
    assert gae_fwd(*rollout, LAMBDA, out=out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, gae_ref(*rollout, LAMBDA), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_accumulates_in_fp32(device):
    rollout = make_rollout(40, 15, torch.float16, device)
    exact = gae_ref(*(t.double() for t in rollout), LAMBDA)
    fast = gae_fwd(*rollout, LAMBDA)
    assert fast.dtype == torch.float16
    assert (fast.double() - exact).abs().max() <= 2 * (gae_ref(*rollout, LAMBDA).double() - exact).abs().max()


def test_launcher_rejects_bad_arguments():
    rewards, discounts, values = make_rollout(4, 5)
    with pytest.raises(ValueError, match="discounts must be"):
        gae_fwd(rewards, discounts, values[:, :-1], LAMBDA)
    with pytest.raises(ValueError, match="rewards must be"):
        gae_fwd(rewards[0], discounts, values, LAMBDA)
    with pytest.raises(ValueError, match="values must be one of"):
        gae_fwd(rewards, discounts, values.double(), LAMBDA)
    with pytest.raises(ValueError, match="out must be"):
        gae_fwd(rewards, discounts, values, LAMBDA, out=torch.empty(4, 6))


def test_unsupported_names_what_the_kernel_cannot_honour():
    rewards, discounts, values = make_rollout(4, 5)
    assert kernel.gae_unsupported(rewards, discounts, values, LAMBDA) is None
    assert "backward" in kernel.gae_unsupported(rewards.requires_grad_(), discounts, values, LAMBDA)
    with torch.no_grad():
        assert kernel.gae_unsupported(rewards, discounts, values, LAMBDA) is None
    assert "bfloat16" in kernel.gae_unsupported(rewards.detach().bfloat16(), discounts, values, LAMBDA)


@pytest.mark.gpu
@COMPILED
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_size_on_gpu(dtype):
    rollout = make_rollout(800, 15, dtype, "cuda")  # M = 800 imagined trajectories, H = 15 (SPEC 5)
    ref_fp32 = gae_ref(*(t.float() for t in rollout), LAMBDA)
    error = (gae_fwd(*rollout, LAMBDA).float() - ref_fp32).abs().max().item()
    if dtype == torch.float32:
        assert error <= 1e-5 * max(ref_fp32.abs().max().item(), 1.0)
    else:
        assert error <= 2 * (gae_ref(*rollout, LAMBDA).float() - ref_fp32).abs().max().item()
