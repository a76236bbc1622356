"""The observation model (SPEC 2): a VAE over frame stacks with categorical latents z."""
from __future__ import annotations

import math

import torch
from torch import nn

from twm_fast import ops
from twm_fast.config import Config
from twm_fast.models.nets import MLP, SILU_GAIN, init_layer

# Encoder output side: 64 -> 31 -> 14 -> 6 -> 2 with kernel 4, stride 2, no padding.
_ENCODER_OUT_SIDE = 2
# Gaussian NLL of a unit-variance Normal has this constant per pixel.
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def obs_to_float(obs: torch.Tensor) -> torch.Tensor:
    """uint8 frames in [0, 255] -> floats in [0, 1]."""
    return obs.float().div_(255.0) if obs.dtype == torch.uint8 else obs


class ObservationModel(nn.Module):
    """Encoder (4 convs + MLP) to 32 x 32 categorical logits; decoder (MLP + 4 transposed convs)
    from a one-hot z back to the mean of a unit-variance Gaussian per pixel."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.num_vars = config.z_categoricals
        self.num_classes = config.z_categories
        self.z_dim = self.num_vars * self.num_classes
        c = config.obs_channels
        stack = config.frame_stack

        convs: list[nn.Module] = []
        for c_in, c_out in zip([stack, c, 2 * c, 4 * c], [c, 2 * c, 4 * c, 8 * c]):
            convs += [init_layer(nn.Conv2d(c_in, c_out, 4, stride=2), SILU_GAIN), nn.SiLU()]
        self.encoder = nn.Sequential(
            *convs,
            nn.Flatten(),
            MLP(8 * c * _ENCODER_OUT_SIDE ** 2, config.obs_hidden_dims, self.z_dim),
        )

        deconvs: list[nn.Module] = []
        channels = [16 * c, 4 * c, 2 * c, c, stack]
        for i, (c_in, c_out, k) in enumerate(zip(channels[:-1], channels[1:], [5, 5, 6, 6])):
            last = i == 3
            deconv = nn.ConvTranspose2d(c_in, c_out, k, stride=2)
            # "pytorch" keeps the default init above, as the published initialiser, which touches
            # Linear and Conv2d only, does (SPEC 2).
            if config.obs_decoder_init == "kaiming":
                init_layer(deconv, 1.0 if last else SILU_GAIN)
                if last:
                    nn.init.constant_(deconv.bias, 0.5)  # the output starts near mid-grey
            deconvs.append(deconv)
            if not last:
                deconvs.append(nn.SiLU())
        self.decoder = nn.Sequential(
            MLP(self.z_dim, [], 16 * c, output_activation=True),
            nn.Unflatten(1, (16 * c, 1, 1)),
            *deconvs,
        )
        # With bf16 autocast, convolutions run fastest on channels-last tensors (PERF.md's probe: the
        # VAE's update 13.5 -> 10.5 ms on an H200); the layout changes no value.
        self.channels_last = config.world_model_dtype == "bfloat16"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (N, 4, 64, 64) uint8 or float in [0, 1] -> logits (N, 32, 32)."""
        x = obs_to_float(obs)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x).view(-1, self.num_vars, self.num_classes)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, 1024) one-hot (flattened) -> reconstruction means (N, 4, 64, 64)."""
        return self.decoder(z)

    def sample(self, logits: torch.Tensor, mode: str = "sample", noise: torch.Tensor | None = None):
        """One z per logits row: (N, 32, 32) -> z (N, 1024), probs, log_probs, entropy (N, 32).

        mode: "sample" (no gradient), "straight_through" (training), "argmax" (acting).
        noise: (N, 32, 32) uniform noise in (0, 1), or None to draw it here."""
        if noise is None and mode != "argmax":
            noise = torch.rand_like(logits)
        onehot, probs, log_probs, entropy = ops.categorical_sample(logits, noise, mode)
        return onehot.flatten(1), probs, log_probs, entropy

    # ---- Losses (SPEC 2) -----------------------------------------------------------------------
    def decoder_loss(self, recon: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Gaussian NLL with unit variance, summed over pixels, mean over samples."""
        target = obs_to_float(obs)
        nll = 0.5 * (recon - target).pow(2) + _HALF_LOG_2PI
        return self.config.obs_decoder_coef * nll.flatten(1).sum(1).mean()

    def entropy_loss(self, entropy: torch.Tensor) -> torch.Tensor:
        """Hinge on the normalised entropy: coef * relu(threshold - H(z) / (32 ln 32)).

        entropy: (N, 32) per-variable entropies."""
        normalized = entropy.sum(-1).mean() / (self.num_vars * math.log(self.num_classes))
        return self.config.obs_entropy_coef * torch.relu(self.config.obs_entropy_threshold - normalized)

    def consistency_loss(self, log_probs: torch.Tensor, predicted_probs: torch.Tensor) -> torch.Tensor:
        """0.01 * cross-entropy(stopgrad(dynamics' predicted probs), encoder log-probs), summed
        over the 32 variables, mean over samples. Both (N, 32, 32)."""
        cross_entropy = -(predicted_probs.detach() * log_probs).sum(-1).sum(-1)
        return self.config.obs_consistency_coef * cross_entropy.mean()
