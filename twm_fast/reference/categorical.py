"""Sampling of categorical latents in plain PyTorch: the twin of the fused Triton sampler.

Randomness is an input: `noise` holds uniform numbers in (0, 1), one per class, and the sample
is argmax(logits + Gumbel(noise)) (the Gumbel-max trick), so the fast and reference paths draw
the same sample from the same noise and a CUDA graph draws afresh on every replay without a
host sync.
"""
from __future__ import annotations

import torch

# Uniform noise is clamped away from 0 and 1 so that -log(-log(u)) stays finite.
_NOISE_EPS = 1e-20


def gumbel_from_uniform(noise: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(noise.clamp(_NOISE_EPS, 1.0 - 1e-7)))


def categorical_sample_ref(
    logits: torch.Tensor, noise: torch.Tensor | None, mode: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one-hot vectors from independent categoricals.

    Args:
        logits: (N, V, C) unnormalised logits of V independent categoricals with C classes.
        noise: (N, V, C) uniform noise in (0, 1); ignored (may be None) when mode == "argmax".
        mode: "sample" (one-hot sample, no gradient through it), "straight_through" (forward the
            one-hot sample, backward through the probabilities: onehot + probs - stopgrad(probs)),
            or "argmax" (the mode, used for acting).
    Returns:
        onehot (N, V, C), probs (N, V, C), log_probs (N, V, C) (normalised logits), entropy (N, V).
    """
    if mode not in ("sample", "straight_through", "argmax"):
        raise ValueError(f"unknown mode {mode!r}; use 'sample', 'straight_through' or 'argmax'")
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)
    if mode == "argmax":
        index = logits.argmax(-1)
    else:
        if noise is None:
            raise ValueError(f"mode {mode!r} needs uniform noise of the logits' shape")
        index = (logits.detach() + gumbel_from_uniform(noise)).argmax(-1)
    # A scatter, not F.one_hot: one_hot checks its indices on the host (a sync per call on a GPU,
    # which also forbids CUDA-graph capture of the reference rollout).
    onehot = torch.zeros_like(logits, memory_format=torch.contiguous_format).scatter_(-1, index[..., None], 1.0)
    if mode == "straight_through":
        onehot = onehot + probs - probs.detach()
    return onehot, probs, log_probs, entropy
