"""The episode-mask kernel (`episode_mask`) against its twin `episode_mask_ref`.

On a CPU the kernel runs in the Triton interpreter; the `gpu` test runs it compiled at the size of an
imagination step (run it with TRITON_INTERPRET=0).
"""

import pytest
import torch
from twm_fast.kernels import episode_mask as kernel
from twm_fast.kernels.episode_mask import episode_mask

from twm_fast.models.dynamics import DynamicsModel
from twm_fast.reference import episode_mask_ref
from twm_fast.testing import compiled_only, kernel_devices, tiny_config

COMPILED = compiled_only()
DEVICES = kernel_devices()


def make_step(B, first, n, memory_length, device="cpu", new_episodes=True):
    """The inputs of step `first` of a rollout: the dynamics model's own layout for that token count,
    episode starts anywhere in the past, and new episodes starting for about a third of the batch."""
    dynamics = DynamicsModel(tiny_config(memory_length=memory_length), num_actions=3).to(device)
    windows = dynamics.first_step_windows if n == 2 else dynamics.step_windows
    _, key_token, _, in_window = dynamics._step_layout(first, windows)
    episode_start = torch.randint(0, first + 1, (B,), device=device)
    new_episode = (torch.rand(B, device=device) < 0.3) if new_episodes else None
    z_pos = 0 if n == 2 else 1
    return episode_start, new_episode, key_token, in_window, first + z_pos, z_pos


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B, first, n, memory_length", [
    (5, 0, 2, 3),       # the first step (z, a): no earlier token
    (37, 8, 3, 3),      # a step in the first pass around the ring
    (70, 47, 3, 16),    # the last step of a paper-size rollout, three programs
    (9, 61, 3, 3),      # far past the ring's first wrap
])
def test_matches_reference(device, B, first, n, memory_length):
    inputs = make_step(B, first, n, memory_length, device, new_episodes=first > 0)
    allowed, start = episode_mask(*inputs)
    allowed_ref, start_ref = episode_mask_ref(*inputs)
    assert allowed.dtype == torch.bool and torch.equal(allowed, allowed_ref)
    assert torch.equal(start, start_ref)
    if inputs[1] is not None:
        assert inputs[1].any() and not torch.equal(start, inputs[0])       # some episodes did restart


@pytest.mark.parametrize("device", DEVICES)
def test_reads_strided_flags(device):
    """The flags may be columns of (B, T) tensors, as when stepping through a stored window."""
    episode_start, new_episode, key_token, in_window, boundary, z_pos = make_step(6, 8, 3, 3, device)
    dones = torch.rand(6, 4, device=device) < 0.5
    starts = torch.randint(0, 9, (6, 2), device=device)
    args = (starts[:, 1], dones[:, 2], key_token, in_window, boundary, z_pos)
    for got, want in zip(episode_mask(*args), episode_mask_ref(*args)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_a_new_episode_hides_everything_before_its_z_token(device):
    episode_start, _, key_token, in_window, boundary, z_pos = make_step(4, 20, 3, 3, device)
    episode_start = torch.zeros_like(episode_start)
    new_episode = torch.tensor([True, False, True, False], device=device)
    allowed, start = episode_mask(episode_start, new_episode, key_token, in_window, boundary, z_pos)
    assert start.tolist() == [boundary, 0, boundary, 0]
    for b in (0, 2):   # the z and a tokens see only keys from the boundary on; the r token sees the past
        assert not (allowed[b, z_pos:] & (key_token < boundary)).any()
        assert allowed[b, 0].any()
    torch.testing.assert_close(allowed[1], in_window & (key_token >= 0))


def test_launcher_rejects_bad_arguments():
    episode_start, new_episode, key_token, in_window, boundary, z_pos = make_step(4, 8, 3, 3)
    with pytest.raises(ValueError, match="episode_start must be"):
        episode_mask(episode_start.int(), new_episode, key_token, in_window, boundary, z_pos)
    with pytest.raises(ValueError, match="new_episode must be"):
        episode_mask(episode_start, new_episode[:2], key_token, in_window, boundary, z_pos)
    with pytest.raises(ValueError, match="key_token must be"):
        episode_mask(episode_start, new_episode, key_token[:-1], in_window, boundary, z_pos)
    with pytest.raises(ValueError, match="in_window must be"):
        episode_mask(episode_start, new_episode, key_token, in_window.int(), boundary, z_pos)
    with pytest.raises(ValueError, match="new_episode must be"):
        episode_mask(episode_start, new_episode.int(), key_token, in_window, boundary, z_pos)
    with pytest.raises(ValueError, match="z_pos must"):
        episode_mask(episode_start, new_episode, key_token, in_window, boundary, 3)
    assert kernel.episode_mask_unsupported(episode_start, new_episode, key_token, in_window, boundary, z_pos) is None
    wide = torch.ones(kernel.MAX_NEW_TOKENS + 1, key_token.shape[0], dtype=torch.bool)
    assert "new tokens" in kernel.episode_mask_unsupported(episode_start, new_episode, key_token, wide, boundary, 1)


@pytest.mark.gpu
@COMPILED
def test_full_size_on_gpu():
    for first, n in ((0, 2), (8, 3), (47, 3)):
        inputs = make_step(800, first, n, 16, "cuda", new_episodes=first > 0)
        allowed, start = episode_mask(*inputs)
        allowed_ref, start_ref = episode_mask_ref(*inputs)
        assert torch.equal(allowed, allowed_ref) and torch.equal(start, start_ref)
