"""The public functional API of the fast ops, and its one dispatch point.

Each op name maps to (reference, fast, unsupported). `TWM_FAST_BACKEND` chooses:
- `auto` (default): the Triton kernel on a CUDA tensor when one is registered, triton is installed
  and the kernel can honour the arguments (its `unsupported` check says why not, e.g. more keys
  than one tile holds, or a gradient the kernel has no backward for); else the reference;
- `triton`: the Triton kernel, and an error if it cannot run (no kernel, CPU tensor without
  TRITON_INTERPRET=1, triton not installed, arguments the kernel cannot honour);
- `torch`: always the plain-PyTorch reference.

Randomness: the samplers take their noise as an input, so both paths draw the same sample. The
attention's dropout (training only) is drawn inside the kernel from a seed, so its mask differs
from the reference's mask for the same torch seed (same distribution).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from twm_fast.reference import (
    categorical_sample_ref,
    discount_reset_ref,
    episode_mask_ref,
    fused_linear_ref,
    gae_ref,
    rel_attention_ref,
    rel_attention_step_ref,
)

BACKENDS = ("auto", "triton", "torch")
# True while `twm_fast.compile_check` drives the library on CPU tensors: the ops then dispatch as on a
# CUDA device, to a stand-in Triton driver that compiles each launch for a GPU target and runs nothing.
_dispatch_as_on_gpu = False


@contextlib.contextmanager
def dispatch_as_on_gpu():
    """Within the block, CPU tensors choose their implementation as CUDA tensors would."""
    global _dispatch_as_on_gpu
    previous, _dispatch_as_on_gpu = _dispatch_as_on_gpu, True
    try:
        yield
    finally:
        _dispatch_as_on_gpu = previous


def _on_gpu(device: torch.device) -> bool:
    return device.type == "cuda" or _dispatch_as_on_gpu


@dataclass(frozen=True)
class OpEntry:
    reference: Callable
    fast: str | None = None  # "module:function" of the Triton entry point, imported on first use
    # "module:function" taking the op's arguments: None when the kernel can run them, else why not.
    unsupported: str | None = None


REGISTRY: dict[str, OpEntry] = {
    "rel_attention": OpEntry(
        rel_attention_ref,
        "twm_fast.kernels.rel_attention:rel_attention",
        "twm_fast.kernels.rel_attention:rel_attention_unsupported",
    ),
    "rel_attention_step": OpEntry(
        rel_attention_step_ref,
        "twm_fast.kernels.rel_attention:rel_attention_step",
        "twm_fast.kernels.rel_attention:rel_attention_step_unsupported",
    ),
    "categorical_sample": OpEntry(
        categorical_sample_ref,
        "twm_fast.kernels.categorical:categorical_sample",
        "twm_fast.kernels.categorical:categorical_sample_unsupported",
    ),
    "gae": OpEntry(
        gae_ref,
        "twm_fast.kernels.gae:gae",
        "twm_fast.kernels.gae:gae_unsupported",
    ),
    "discount_reset": OpEntry(
        discount_reset_ref,
        "twm_fast.kernels.discount_reset:discount_reset",
        "twm_fast.kernels.discount_reset:discount_reset_unsupported",
    ),
    "episode_mask": OpEntry(
        episode_mask_ref,
        "twm_fast.kernels.episode_mask:episode_mask",
        "twm_fast.kernels.episode_mask:episode_mask_unsupported",
    ),
    "fused_linear": OpEntry(
        fused_linear_ref,
        "twm_fast.kernels.fused_linear:fused_linear",
        "twm_fast.kernels.fused_linear:fused_linear_unsupported",
    ),
}


def backend() -> str:
    value = os.environ.get("TWM_FAST_BACKEND", "auto").lower()
    if value not in BACKENDS:
        raise ValueError(f"TWM_FAST_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


@functools.cache
def _load(path: str) -> Callable:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def implementation(name: str, device: torch.device, args: tuple = ()) -> Callable:
    """The function that runs op `name` on `args` (tensors on `device`) under the current backend.

    With `args` empty the kernel's argument check is skipped (the answer then depends on the
    device alone).
    """
    entry = REGISTRY[name]
    choice = backend()
    if choice == "torch":
        return entry.reference
    if choice == "triton":
        if entry.fast is None:
            raise RuntimeError(f"TWM_FAST_BACKEND=triton but op {name!r} has no Triton kernel")
        if not _triton_installed():
            raise RuntimeError(f"TWM_FAST_BACKEND=triton but triton is not installed (op {name!r})")
        if not _on_gpu(device) and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"TWM_FAST_BACKEND=triton but op {name!r} got a {device.type} tensor; Triton needs "
                "a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter)")
        reason = _load(entry.unsupported)(*args) if entry.unsupported and args else None
        if reason is not None:
            raise RuntimeError(f"TWM_FAST_BACKEND=triton but the {name!r} kernel cannot run these arguments: "
                               f"{reason}")
        return _load(entry.fast)
    # auto: the kernel only on a GPU (the interpreter is for tests, far too slow for training).
    if entry.fast is None or not _on_gpu(device) or not _triton_installed():
        return entry.reference
    if entry.unsupported and args and _load(entry.unsupported)(*args) is not None:
        return entry.reference
    return _load(entry.fast)


def rel_attention(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p=0.0):
    """Relative-position attention; see `twm_fast.reference.attention.rel_attention_ref`.

    q: (batch, queries, heads, head_dim); k, v: (batch, keys, heads, head_dim); rel_pos:
    (distances, heads, head_dim); u_bias, v_bias: (heads, head_dim); dist: (queries, keys) or
    (batch, queries, keys) int; allowed: (batch, queries, keys) bool -> (batch, queries, heads, head_dim).
    """
    args = (q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p)
    return implementation("rel_attention", q.device, args)(*args)


def rel_attention_step(q, k_new, v_new, k_cache, v_cache, slots, rel_pos, u_bias, v_bias, dist, allowed, scale):
    """One cached step: write k_new, v_new (B, n, H, D) into the K/V cache (B, S, H, D) at slots (n,),
    then attend over the cache; see `twm_fast.reference.attention.rel_attention_step_ref`."""
    args = (q, k_new, v_new, k_cache, v_cache, slots, rel_pos, u_bias, v_bias, dist, allowed, scale)
    return implementation("rel_attention_step", q.device, args)(*args)


def categorical_sample(logits, noise, mode="sample"):
    """Categorical one-hot sampling; see `twm_fast.reference.categorical.categorical_sample_ref`.

    logits, noise: (batch, categoricals, classes) -> onehot, probs, log_probs (batch, categoricals,
    classes) and entropy (batch, categoricals).
    """
    args = (logits, noise, mode)
    return implementation("categorical_sample", logits.device, args)(*args)


def gae(rewards, discounts, values, lam):
    """GAE advantages; see `twm_fast.reference.gae.gae_ref`.

    rewards, discounts: (trajectories, horizon); values: (trajectories, horizon + 1)
    -> (trajectories, horizon).
    """
    args = (rewards, discounts, values, lam)
    return implementation("gae", rewards.device, args)(*args)


def discount_reset(discount_logit, prev_done, cumulative, next_z, restart_z, restart_index, threshold):
    """The discount-threshold reset of an imagined step (SPEC 5.3); see
    `twm_fast.reference.discount_reset.discount_reset_ref`.

    discount_logit, prev_done, cumulative, restart_index: (M,); next_z: (M, Z); restart_z: (P, Z)
    -> discount, weight, cumulative (M,), done (M,) bool, z (M, Z).
    """
    args = (discount_logit, prev_done, cumulative, next_z, restart_z, restart_index, threshold)
    return implementation("discount_reset", next_z.device, args)(*args)


def episode_mask(episode_start, new_episode, key_token, in_window, boundary, z_pos):
    """The episode-boundary mask of a cached step (SPEC 3); see
    `twm_fast.reference.episode_mask.episode_mask_ref`.

    episode_start: (B,) int64; new_episode: (B,) bool or None; key_token: (S,) int64; in_window:
    (n, S) bool -> allowed (B, n, S) bool, episode_start (B,) int64.
    """
    args = (episode_start, new_episode, key_token, in_window, boundary, z_pos)
    return implementation("episode_mask", episode_start.device, args)(*args)


def fused_linear(x, weight, bias=None, residual=None, norm_weight=None, norm_bias=None, eps=1e-5,
                 input_silu=False, output_silu=False):
    """silu?(x) @ weight^T + bias, then silu?, then LayerNorm(residual + .); see
    `twm_fast.reference.linear.fused_linear_ref`.

    x: (..., in_features); weight: (out_features, in_features); residual: (..., out_features) with
    the LayerNorm's norm_weight, norm_bias (out_features,) and eps -> (..., out_features).
    """
    args = (x, weight, bias, residual, norm_weight, norm_bias, eps, input_silu, output_silu)
    return implementation("fused_linear", x.device, args)(*args)


def linear(layer: torch.nn.Linear, x, *, input_silu=False, output_silu=False, residual=None,
           norm: torch.nn.LayerNorm | None = None):
    """`fused_linear` with the parameters of an nn.Linear (and of the nn.LayerNorm after the residual)."""
    if (residual is None) != (norm is None):
        raise ValueError("residual and norm go together: LayerNorm(residual + layer(x))")
    if norm is None:
        return fused_linear(x, layer.weight, layer.bias, input_silu=input_silu, output_silu=output_silu)
    return fused_linear(x, layer.weight, layer.bias, residual, norm.weight, norm.bias, norm.eps,
                        input_silu, output_silu)
