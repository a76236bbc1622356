"""The public functional API of the fast ops, and its one dispatch point.

Each op name maps to (fast, reference). `TWM_FAST_BACKEND` chooses:
- `auto` (default): the Triton kernel on a CUDA tensor when one is registered, else the reference;
- `triton`: the Triton kernel, and an error if it cannot run (no kernel, CPU tensor without
  TRITON_INTERPRET=1, triton not installed);
- `torch`: always the plain-PyTorch reference.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from twm_fast.reference import categorical_sample_ref, gae_ref, rel_attention_ref

BACKENDS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class OpEntry:
    reference: Callable
    fast: str | None  # "module:function" of the Triton launcher, imported on first use


REGISTRY: dict[str, OpEntry] = {
    "rel_attention": OpEntry(rel_attention_ref, None),
    "categorical_sample": OpEntry(categorical_sample_ref, None),
    "gae": OpEntry(gae_ref, None),
}


def backend() -> str:
    value = os.environ.get("TWM_FAST_BACKEND", "auto").lower()
    if value not in BACKENDS:
        raise ValueError(f"TWM_FAST_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def _load(path: str) -> Callable:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)


def implementation(name: str, device: torch.device) -> Callable:
    """The function that runs op `name` for tensors on `device` under the current backend."""
    entry = REGISTRY[name]
    choice = backend()
    if choice == "torch":
        return entry.reference
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    runnable = entry.fast is not None and (device.type == "cuda" or interpret)
    if choice == "triton":
        if entry.fast is None:
            raise RuntimeError(f"TWM_FAST_BACKEND=triton but op {name!r} has no Triton kernel")
        if not runnable:
            raise RuntimeError(
                f"TWM_FAST_BACKEND=triton but op {name!r} got a {device.type} tensor; Triton needs "
                "a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter)")
        return _load(entry.fast)
    # auto: the kernel only on a GPU (the interpreter is for tests, far too slow for training).
    if entry.fast is not None and device.type == "cuda":
        return _load(entry.fast)
    return entry.reference


def rel_attention(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p=0.0):
    """Relative-position attention; see `twm_fast.reference.attention.rel_attention_ref`."""
    fn = implementation("rel_attention", q.device)
    return fn(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale, dropout_p)


def categorical_sample(logits, noise, mode="sample"):
    """Categorical one-hot sampling; see `twm_fast.reference.categorical.categorical_sample_ref`."""
    fn = implementation("categorical_sample", logits.device)
    return fn(logits, noise, mode)


def gae(rewards, discounts, values, lam):
    """GAE advantages; see `twm_fast.reference.gae.gae_ref`."""
    fn = implementation("gae", rewards.device)
    return fn(rewards, discounts, values, lam)
