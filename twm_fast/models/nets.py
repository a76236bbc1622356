"""Building blocks shared by the models: MLPs and the weight initialisation of SPEC 2 and 4."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from twm_fast import ops

# SiLU layers are initialised with the ReLU gain, as the published implementation does.
SILU_GAIN = math.sqrt(2.0)


def kaiming_uniform_(weight: torch.Tensor, gain: float) -> None:
    """Kaiming-uniform with an explicit gain: U(-b, b), b = sqrt(3) * gain / sqrt(fan_in)."""
    fan_in = nn.init._calculate_correct_fan(weight, "fan_in")
    bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def init_layer(layer: nn.Module, gain: float, scheme: str = "kaiming_uniform") -> nn.Module:
    """Initialise a Linear/Conv layer in place: weights by `scheme` with `gain`, biases zero."""
    if scheme == "kaiming_uniform":
        kaiming_uniform_(layer.weight, gain)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(layer.weight, gain=gain)
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Sequential):
    """Linear layers with SiLU between them (and optionally before the first / after the last).

    `input_activation` puts a SiLU on the input (the dynamics heads act on the raw transformer
    output); `output_activation` ends with a SiLU (the token embeddings); `dropout` follows each
    hidden activation. Hidden layers use the SiLU gain; a final linear layer uses gain 1.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, *, input_activation: bool = False,
                 output_activation: bool = False, dropout: float = 0.0, init: str = "kaiming_uniform",
                 final_bias: float = 0.0):
        layers: list[nn.Module] = [nn.SiLU()] if input_activation else []
        dims = [in_dim, *hidden_dims]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [init_layer(nn.Linear(d_in, d_out), SILU_GAIN, init), nn.SiLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        final = init_layer(nn.Linear(dims[-1], out_dim), SILU_GAIN if output_activation else 1.0, init)
        nn.init.constant_(final.bias, final_bias)
        layers.append(final)
        if output_activation:
            layers.append(nn.SiLU())
        super().__init__(*layers)
        self.input_activation, self.output_activation, self.dropout = input_activation, output_activation, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or (self.training and self.dropout > 0):
            # Training: autograd through the modules (the fused op is forward-only), and dropout
            # sits between the pieces the fused path joins.
            return super().forward(x)
        # Inference (imagination, acting, targets): each Linear with its SiLUs is one `ops.fused_linear`.
        linears = [m for m in self if isinstance(m, nn.Linear)]
        for i, linear in enumerate(linears):
            last = i == len(linears) - 1
            x = ops.linear(linear, x, input_silu=self.input_activation and i == 0,
                           output_silu=self.output_activation or not last)
        return x


def adam(params, lr: float, eps: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with L2 weight decay added to the gradient (torch.optim.Adam, not AdamW), as published.
    Fused (one kernel per device and dtype, on a CPU too): the fused step reads `found_inf` on the
    device, which is how `optimizer_step` skips a non-finite update without a host sync."""
    return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """zero_grad, backward, clip the global gradient norm, step. Returns (the pre-clip norm,
    skipped: 1.0 if the step was skipped else 0.0, both 0-dim tensors on the device).

    The step is skipped when the loss or the gradient norm is not finite, or `valid` (a 0-dim bool
    tensor, e.g. "the imagined rollout is finite") is False: the flag goes to the fused Adam
    kernel as `found_inf` (the protocol of torch.amp.GradScaler), which then leaves the parameters,
    the moments and the step count as they were. All on the device: no host sync and no
    data-dependent control flow, so this also runs inside a CUDA graph."""
    if not optimizer.defaults.get("fused"):
        raise ValueError("optimizer_step skips non-finite updates through fused Adam; make the optimiser "
                         "with twm_fast.models.nets.adam")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, clip)
    finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
    if valid is not None:
        finite = finite & valid
    skipped = (~finite).float()
    optimizer.found_inf = skipped
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf
    return norm.detach(), skipped
