"""The precision policy: one setting for cuBLAS, cuDNN and every Triton kernel (config.matmul_precision).

- "high": fp32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa products, fp32
  accumulation), in cuBLAS, cuDNN and the kernels alike. PERF.md: the 8 ms imagination and 3 ms
  actor-critic targets cannot be met in IEEE fp32 (about 710 and 197 GFLOP at ~60 TFLOP/s).
- "highest": IEEE fp32 products everywhere, convolutions included.
- "published": what the published code ran under (PyTorch 1.12's defaults): IEEE fp32 matmuls and
  kernels, TF32 convolutions in cuDNN (``torch.backends.cudnn.allow_tf32``'s default).
- "auto" (the default): "high" on a CUDA device, "highest" elsewhere (on a CPU "high" could let
  oneDNN use bf16 products, which the CPU results were not measured with).

bf16 is a separate choice (config.imagine_dtype, config.world_model_dtype).
"""
from __future__ import annotations

import torch

from twm_fast.config import MATMUL_PRECISIONS


def resolve_matmul_precision(name: str, device: torch.device) -> str:
    """"auto" -> "high" on a CUDA device, "highest" elsewhere; the others as they are."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision={name!r} must be one of {', '.join(MATMUL_PRECISIONS)}")
    if name == "auto":
        return "high" if device.type == "cuda" else "highest"
    return name


def apply_matmul_precision(name: str) -> None:
    """Set "high", "highest" or "published" for cuBLAS matmuls, cuDNN convolutions and the Triton kernels
    (which read torch's float32 matmul precision at each launch: twm_fast/kernels/runtime.py)."""
    if name not in ("high", "highest", "published"):
        raise ValueError(f"apply_matmul_precision takes 'high', 'highest' or 'published' (resolve 'auto' first); "
                         f"got {name!r}")
    torch.set_float32_matmul_precision("high" if name == "high" else "highest")
    torch.backends.cudnn.allow_tf32 = name != "highest"


def numerics_key(device_type: str = "cuda") -> tuple:
    """What decides which kernels a call launches besides its inputs: the fp32 precision of cuBLAS,
    cuDNN and the kernels, and the autocast state. Part of every CUDA-graph key: a graph must not
    replay kernels built for another precision or autocast dtype."""
    autocast = torch.is_autocast_enabled(device_type)
    return (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, autocast,
            torch.get_autocast_dtype(device_type) if autocast else None)
