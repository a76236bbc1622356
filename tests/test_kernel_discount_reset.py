"""The discount-reset kernel (`discount_reset`) against its twin `discount_reset_ref`.

On a CPU the kernel runs in the Triton interpreter (tiny shapes, fp32); the `gpu` tests run it
compiled at the size of an imagination step, also with bf16 logits (run them with TRITON_INTERPRET=0).
"""

import pytest
import torch
import torch.nn.functional as F
from twm_fast.kernels import discount_reset as kernel
from twm_fast.kernels.discount_reset import discount_reset

from twm_fast.reference import discount_reset_ref
from twm_fast.testing import compiled_only, kernel_devices

COMPILED = compiled_only()
DEVICES = kernel_devices()
THRESHOLD = 0.1  # SPEC 5.3


def make_step(M, V=4, C=5, P=3, logit_dtype=torch.float32, device="cpu"):
    """A step's inputs: logits spread over both sides of the threshold, a third of the rollouts
    just restarted, one-hot latents and a pool of P restart latents."""
    logit = (3 * torch.randn(M, device=device)).to(logit_dtype)
    prev_done = torch.rand(M, device=device) < 0.3
    cumulative = torch.rand(M, device=device)
    one_hot = lambda n: F.one_hot(torch.randint(0, C, (n, V), device=device), C).float().flatten(1)  # noqa: E731
    return logit, prev_done, cumulative, one_hot(M), one_hot(P), torch.randint(0, P, (M,), device=device)


def assert_matches(fast, ref):
    discount, weight, cumulative, done, z = fast
    torch.testing.assert_close(discount, ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(weight, ref[1], atol=0, rtol=0)
    torch.testing.assert_close(cumulative, ref[2], atol=1e-6, rtol=1e-6)
    # done may differ only for a cumulative discount within rounding of the threshold.
    clear = (ref[2] - THRESHOLD).abs() > 1e-5
    assert done.dtype == torch.bool and torch.equal(done[clear], ref[3][clear])
    assert torch.equal(z[clear], ref[4][clear])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M, V, C, P", [(37, 4, 5, 3), (5, 2, 3, 1), (70, 32, 32, 7)])  # 70: three programs
def test_matches_reference(device, M, V, C, P):
    inputs = make_step(M, V, C, P, device=device)
    fast = discount_reset(*inputs, THRESHOLD)
    ref = discount_reset_ref(*inputs, THRESHOLD)
    assert_matches(fast, ref)
    done = ref[3]
    assert done.any() and (~done).any()        # both branches exercised
    assert inputs[1].any()                     # and the weight's restart at 1


@pytest.mark.parametrize("device", DEVICES)
def test_every_rollout_restarts_or_none(device):
    """Threshold 2 (every cumulative discount is below it) and -1 (none is)."""
    inputs = make_step(9, device=device)
    for threshold, expect_done in ((2.0, True), (-1.0, False)):
        _, _, _, done, z = discount_reset(*inputs, threshold)
        assert bool(done.all()) is expect_done and bool(done.any()) is expect_done
        expected = inputs[4][inputs[5]] if expect_done else inputs[3]
        assert torch.equal(z, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # exp(1e4) = inf is the point
def test_extreme_logits_clamp_to_the_unit_interval(device):
    logit, *rest = make_step(6, device=device)
    logit = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4, float("inf")], device=device)
    fast = discount_reset(logit, *rest, THRESHOLD)
    ref = discount_reset_ref(logit, *rest, THRESHOLD)
    assert_matches(fast, ref)
    assert ((fast[0] >= 0) & (fast[0] <= 1)).all()


def test_launcher_rejects_bad_arguments():
    logit, prev_done, cumulative, next_z, restart_z, index = make_step(5)
    with pytest.raises(ValueError, match="next_z must be"):
        discount_reset(logit, prev_done, cumulative, next_z, restart_z[:, :3], index, THRESHOLD)
    with pytest.raises(ValueError, match="prev_done must be a contiguous"):
        discount_reset(logit, prev_done[:4], cumulative, next_z, restart_z, index, THRESHOLD)
    with pytest.raises(ValueError, match="prev_done must be bool"):
        discount_reset(logit, prev_done.float(), cumulative, next_z, restart_z, index, THRESHOLD)
    with pytest.raises(ValueError, match="restart_z of next_z's"):
        discount_reset(logit, prev_done, cumulative, next_z, restart_z.double(), index, THRESHOLD)
    with pytest.raises(ValueError, match="contiguous last"):
        discount_reset(logit, prev_done, cumulative, next_z.t().contiguous().t(), restart_z, index, THRESHOLD)


def test_unsupported_names_what_the_kernel_cannot_honour():
    logit, prev_done, cumulative, next_z, restart_z, index = make_step(5)
    assert kernel.discount_reset_unsupported(logit, prev_done, cumulative, next_z, restart_z, index, 0.1) is None
    leaf = logit.clone().requires_grad_()
    assert "no backward" in kernel.discount_reset_unsupported(leaf, prev_done, cumulative, next_z, restart_z,
                                                              index, 0.1)
    assert "bfloat16" in kernel.discount_reset_unsupported(logit.bfloat16(), prev_done, cumulative, next_z,
                                                           restart_z, index, 0.1)
    strided = torch.rand(10)[::2]
    assert "contiguous" in kernel.discount_reset_unsupported(logit, prev_done, strided, next_z, restart_z, index,
                                                             0.1)


# ---- full size on a GPU ----------------------------------------------------------------------------
@pytest.mark.gpu
@COMPILED
@pytest.mark.parametrize("logit_dtype", [torch.float32, torch.bfloat16])
def test_full_size_on_gpu(logit_dtype):
    """An imagination step at M = 800 with a pool of 800 restart latents of 32 x 32."""
    inputs = make_step(800, 32, 32, 800, logit_dtype, "cuda")
    assert_matches(discount_reset(*inputs, THRESHOLD), discount_reset_ref(*inputs, THRESHOLD))
