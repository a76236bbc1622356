"""What every launcher asks of the runtime: the precision of fp32 products, and whether the Triton
interpreter (not a GPU compiler) runs the kernels.

Precision: one rule for every kernel, torch's float32 matmul precision.
`torch.set_float32_matmul_precision("high")` lets cuBLAS use TF32 tensor cores for fp32 matmuls
(twm-fast sets it from `config.matmul_precision`); the kernels follow the same setting, so a run is
TF32 or IEEE fp32 throughout, never a mix. bf16 and fp16 products always use tensor cores.
"""
from __future__ import annotations

import os

import torch


def ieee_fp32(dtype: torch.dtype) -> bool:
    """Whether products of `dtype` inputs must be IEEE fp32 (no TF32): fp32 under "highest"."""
    return dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"


def interpreted() -> bool:
    """Whether the kernels run in the Triton interpreter (TRITON_INTERPRET=1, read when a kernel module
    is imported): on the CPU, slowly, and without bfloat16."""
    return os.environ.get("TRITON_INTERPRET") == "1"
