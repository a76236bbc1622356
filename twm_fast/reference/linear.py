"""A linear layer and its elementwise neighbours in plain PyTorch: the twin of the fused Triton layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fused_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
                     norm_bias: torch.Tensor | None = None, eps: float = 1e-5, input_silu: bool = False,
                     output_silu: bool = False) -> torch.Tensor:
    """silu?(x) @ weight^T + bias, then silu?, then LayerNorm(residual + .).

    The pieces of the models' layers in their order: an MLP layer of the dynamics heads (SiLU on
    the transformer output first), a hidden MLP layer (SiLU after), a post-norm transformer
    sublayer (residual, then LayerNorm with norm_weight, norm_bias and eps).

    Args:
        x: (..., in_features); weight: (out_features, in_features); bias: (out_features,) or None.
        residual: (..., out_features) or None, given with norm_weight and norm_bias (out_features,).
    Returns:
        (..., out_features).
    """
    if (residual is None) != (norm_weight is None) or (norm_weight is None) != (norm_bias is None):
        raise ValueError("residual, norm_weight and norm_bias go together (LayerNorm(residual + y)); "
                         "pass all three or none")
    if input_silu:
        x = F.silu(x)
    y = F.linear(x, weight, bias)
    if output_silu:
        y = F.silu(y)
    if residual is not None:
        y = F.layer_norm(residual + y, (y.shape[-1],), norm_weight, norm_bias, eps)
    return y
