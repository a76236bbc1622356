"""The dynamics model (SPEC 3): an autoregressive Transformer-XL over (z, a, r) tokens.

Tokens of a window of T steps: z_0 a_0 r_0 z_1 a_1 r_1 ... z_{T-1} a_{T-1} (3T - 1 tokens; the
last reward is not an input). h_t is the output at the a_t token; the heads read it to predict
z_{t+1}, r_t and the discount g_t.

Masks, from the published implementation (both are needed for correctness):
- memory window: a z or a token sees the 51 tokens before it, an r token the 50 before it, so
  that one cached step (r_{t-1}, z_t, a_t) over a memory of 3 * 16 + 2 = 50 hidden states sees
  exactly what the whole-window pass sees;
- episode boundaries: no token of step t sees a token of step s < t when an episode ended
  (terminated or truncated) at a step in [s, t).

Inference keeps per layer a K/V cache instead of the hidden states: with relative positions a
cached key stays valid as the window slides, so this is exact and avoids recomputing K and V.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from twm_fast import ops
from twm_fast.config import Config
from twm_fast.models.nets import MLP

# Token kinds in their order within a step.
Z_TOKEN, A_TOKEN, R_TOKEN = 0, 1, 2
TOKENS_PER_STEP = 3
# Step layouts are kept for sequences up to this many times around the K/V ring (see _step_layout).
_CACHED_LAYOUT_RINGS = 4


def window_sizes(memory_length: int) -> tuple[int, int, int]:
    """How many earlier tokens a z, a and r token may see (published masks, see module doc)."""
    zw = TOKENS_PER_STEP * (memory_length + 1)
    return zw, zw, TOKENS_PER_STEP * memory_length + 2


def cache_slots(memory_length: int) -> int:
    """K/V cache size: the 50 remembered tokens plus the 3 of the new step."""
    return TOKENS_PER_STEP * (memory_length + 1) + 2


def sinusoidal_encodings(length: int, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017) encodings of the distances 0 .. length-1: (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim)
    enc[:, 0::2] = torch.sin(position * inv_freq)
    enc[:, 1::2] = torch.cos(position * inv_freq)
    return enc


def window_mask(dones: torch.Tensor, memory_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and visibility for one pass over a window.

    Args:
        dones: (B, T - 1) bool, episode ended after step t (terminated or truncated).
    Returns:
        dist (S, S) int64 with dist[i, j] = i - j, and allowed (B, S, S) bool, S = 3T - 1.
    """
    steps = dones.shape[1] + 1
    num_tokens = TOKENS_PER_STEP * steps - 1
    device = dones.device
    pos = torch.arange(num_tokens, device=device)
    dist = pos[:, None] - pos[None, :]                                        # (S, S)
    z_window, _, r_window = window_sizes(memory_length)  # z and a tokens share a window
    window = torch.where(pos % TOKENS_PER_STEP == R_TOKEN, r_window, z_window)
    in_window = (dist >= 0) & (dist <= window[:, None])                        # (S, S)
    # Episode index of each step: the number of dones before it.
    episode = F.pad(dones.long().cumsum(1), (1, 0))                           # (B, T)
    token_episode = episode[:, pos // TOKENS_PER_STEP]                         # (B, S)
    same_episode = token_episode[:, :, None] == token_episode[:, None, :]     # (B, S, S)
    return dist, in_window[None] & same_episode


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (no biases)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scale = 1.0 / math.sqrt(dim)  # the model width, not the head width (SPEC 3)
        self.dropout = dropout
        self.qkv_proj = nn.Linear(dim, 3 * num_heads * head_dim, bias=False)
        self.pos_proj = nn.Linear(dim, num_heads * head_dim, bias=False)  # W_R
        self.out_proj = nn.Linear(num_heads * head_dim, dim, bias=False)

    def project_positions(self, encodings: torch.Tensor) -> torch.Tensor:
        """(R, dim) encodings -> (R, H, D) rows of W_R R(d)."""
        return self.pos_proj(encodings).view(-1, self.num_heads, self.head_dim)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim) -> q, k, v packed as (B, S, 3, H, D) (views of one projection)."""
        return self.qkv_proj(x).view(*x.shape[:2], 3, self.num_heads, self.head_dim)

    def attend(self, q, k, v, rel_pos, u_bias, v_bias, dist, allowed) -> torch.Tensor:
        """The heads' outputs, concatenated: (B, T, H * D). out_proj is applied by the layer, fused
        with the residual and the LayerNorm."""
        p = self.dropout if self.training else 0.0
        return ops.rel_attention(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, self.scale, p).flatten(2)

    def attend_step(self, qkv, kv, slots, rel_pos, u_bias, v_bias, dist, allowed) -> torch.Tensor:
        """A cached step (no dropout): write the new tokens' keys and values, qkv (B, n, 3, H, D), into
        the layer's ring kv (B, S, 2, H, D) at slots (n,) and attend over it -> (B, n, H * D)."""
        return ops.rel_attention_step(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], kv[:, :, 0], kv[:, :, 1], slots,
                                      rel_pos, u_bias, v_bias, dist, allowed, self.scale).flatten(2)


class TransformerXLLayer(nn.Module):
    """Post-norm decoder layer: x = LN(x + attn(x)); x = LN(x + ff(x))."""

    def __init__(self, config: Config):
        super().__init__()
        dim = config.dyn_embed_dim
        self.attn = RelativeSelfAttention(dim, config.dyn_num_heads, config.dyn_head_dim, config.dyn_dropout)
        self.linear1 = nn.Linear(dim, config.dyn_feedforward_dim)
        self.linear2 = nn.Linear(config.dyn_feedforward_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(config.dyn_dropout)

    def feedforward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear2(self.dropout(F.silu(self.linear1(x)))))

    def residual(self, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention: x (B, T, dim), heads (B, T, H * D) -> (B, T, dim)."""
        if torch.is_grad_enabled() or (self.training and self.dropout.p > 0):
            # Training: autograd through the modules (the fused op is forward-only), with dropout.
            x = self.norm1(x + self.dropout(self.attn.out_proj(heads)))
            return self.norm2(x + self.feedforward(x))
        # Inference: each Linear fuses with its neighbours, three kernels on a GPU instead of eight.
        x = ops.linear(self.attn.out_proj, heads, residual=x, norm=self.norm1)
        hidden = ops.linear(self.linear1, x, output_silu=True)
        return ops.linear(self.linear2, hidden, residual=x, norm=self.norm2)


@dataclass
class KVCache:
    """Per-layer keys and values of the last `slots` tokens of a batch of sequences, as a ring.

    All sequences advance in lockstep, so the token count is one Python int; each sequence keeps
    the absolute index of the first token of its current episode (older keys are masked)."""

    kv: list[torch.Tensor]              # per layer (B, slots, 2, H, D): keys and values
    episode_start: torch.Tensor         # (B,) absolute index of the current episode's first token
    num_tokens: int = 0                 # tokens written so far
    rel_pos: list[torch.Tensor] | None = None  # per layer (R, H, D), projected once per cache


class DynamicsModel(nn.Module):
    def __init__(self, config: Config, num_actions: int):
        super().__init__()
        self.config = config
        self.num_actions = num_actions
        dim = config.dyn_embed_dim
        z_dim = config.z_categoricals * config.z_categories
        self.memory_length = config.memory_length
        self.slots = cache_slots(config.memory_length)

        self.z_embed = MLP(z_dim, [], dim, output_activation=True)
        self.a_embed = nn.Embedding(num_actions, dim)
        self.r_embed = MLP(1, [], dim, output_activation=True)
        if config.dyn_identical_layers:
            # As published: deep copies of one initialised layer, so all layers start equal (SPEC 3).
            layer = TransformerXLLayer(config)
            self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(config.dyn_num_layers))
        else:
            self.layers = nn.ModuleList(TransformerXLLayer(config) for _ in range(config.dyn_num_layers))
        # u and v are shared by all layers (Dai et al. 2019).
        self.u_bias = nn.Parameter(torch.empty(config.dyn_num_heads, config.dyn_head_dim))
        self.v_bias = nn.Parameter(torch.empty(config.dyn_num_heads, config.dyn_head_dim))
        nn.init.xavier_uniform_(self.u_bias)
        nn.init.xavier_uniform_(self.v_bias)
        self.register_buffer("encodings", sinusoidal_encodings(self.slots, dim), persistent=False)
        # Windows of the tokens a cached step appends: (z_0, a_0) first, then (r_{t-1}, z_t, a_t).
        z_window, a_window, r_window = window_sizes(config.memory_length)
        self.register_buffer("first_step_windows", torch.tensor([z_window, a_window]), persistent=False)
        self.register_buffer("step_windows", torch.tensor([r_window, z_window, a_window]), persistent=False)
        self.pos_dropout = nn.Dropout(config.dyn_dropout)
        self._layouts: dict[tuple, tuple[torch.Tensor, ...]] = {}  # see _step_layout

        drop = config.dyn_dropout
        self.z_head = MLP(dim, config.dyn_z_head_dims, z_dim, input_activation=True, dropout=drop)
        self.reward_head = MLP(dim, config.dyn_reward_head_dims, 1, input_activation=True, dropout=drop)
        self.discount_head = MLP(dim, config.dyn_discount_head_dims, 1, input_activation=True, dropout=drop,
                                 final_bias=config.discount)

    # ---- Heads -------------------------------------------------------------------------------
    def predict(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """h (..., dim) -> z_logits (..., 32, 32), reward mean (...), discount logit (...)."""
        c = self.config
        return {
            "z_logits": self.z_head(h).unflatten(-1, (c.z_categoricals, c.z_categories)),
            "reward": self.reward_head(h).squeeze(-1),
            "discount_logit": self.discount_head(h).squeeze(-1),
        }

    # ---- One pass over a window (training) ------------------------------------------------------
    def embed_window(self, z, actions, rewards) -> torch.Tensor:
        """z (B, T, z_dim), actions (B, T), rewards (B, T-1) -> tokens (B, 3T-1, dim)."""
        batch, steps = actions.shape
        tokens = torch.stack([
            self.z_embed(z),
            self.a_embed(actions),
            self.r_embed(F.pad(rewards, (0, 1))[..., None]),
        ], dim=2)                                                                # (B, T, 3, dim)
        return tokens.flatten(1, 2)[:, :-1]                                      # (B, 3T-1, dim)

    def forward(self, z, actions, rewards, dones) -> torch.Tensor:
        """The transformer outputs h_t at the a_t tokens.

        Args:
            z: (B, T, z_dim) latents; actions: (B, T) int64; rewards: (B, T-1) r_0..r_{T-2};
            dones: (B, T-1) bool, episode ended after step t.
        Returns:
            h: (B, T, dim).
        """
        x = self.embed_window(z, actions, rewards)
        dist, allowed = window_mask(dones, self.memory_length)
        encodings = self.pos_dropout(self.encodings)
        for layer in self.layers:
            q, k, v = layer.attn.qkv(x).unbind(2)
            rel_pos = layer.attn.project_positions(encodings)
            x = layer.residual(x, layer.attn.attend(q, k, v, rel_pos, self.u_bias, self.v_bias, dist, allowed))
        return x[:, A_TOKEN::TOKENS_PER_STEP]                                    # (B, T, dim)

    # ---- Cached stepping (imagination) ------------------------------------------------------------
    def new_cache(self, batch_size: int) -> KVCache:
        p = self.u_bias
        shape = (batch_size, self.slots, 2, self.config.dyn_num_heads, self.config.dyn_head_dim)
        return KVCache(
            kv=[p.new_zeros(shape) for _ in self.layers],
            episode_start=torch.zeros(batch_size, dtype=torch.long, device=p.device),
            rel_pos=[layer.attn.project_positions(self.encodings) for layer in self.layers],
        )

    def _step_layout(self, first: int, windows: torch.Tensor):
        """Where the tokens first .. first + n - 1 go and what they may see, episodes aside.

        All sequences advance in lockstep, so this depends on the token count alone: it is built once
        per (first, n) and kept (the tensors a CUDA graph reads then stay alive and unchanged), for
        the first few passes around the ring (an imagination rollout writes 47 of its 53 slots);
        longer sequences build it at every step rather than grow the store without bound.
        Returns slots (n,) int64 of the new tokens; key_token (S,) the token each slot holds after the
        write (-1 if none yet); dist (n, S) query minus key token; in_window (n, S) bool."""
        n = windows.shape[0]
        key = (first, n, windows.device)
        layout = self._layouts.get(key)
        if layout is None:
            token_index = torch.arange(first, first + n, device=windows.device)
            slots = token_index % self.slots
            # Slot s holds the latest token t < first + n with t % slots == s.
            last = first + n - 1
            key_token = last - (last - torch.arange(self.slots, device=windows.device)) % self.slots
            key_token = torch.where(key_token >= 0, key_token, -1)
            dist = token_index[:, None] - key_token[None, :]
            in_window = (key_token[None] >= 0) & (dist >= 0) & (dist <= windows[:, None])
            layout = (slots, key_token, dist, in_window)
            if first < _CACHED_LAYOUT_RINGS * self.slots:
                self._layouts[key] = layout
        return layout

    def _step_tokens(self, cache: KVCache, x: torch.Tensor, windows: torch.Tensor, z_pos: int,
                     new_episode: torch.Tensor | None) -> torch.Tensor:
        """Append tokens x (B, n, dim) to the cache and return their outputs.

        windows: (n,) how many earlier tokens each new token may see (a registered buffer, so that
        a CUDA graph captures no host-to-device copy); z_pos: the position of the z token among
        the new ones; new_episode: (B,) bool, a new episode starts at that z token."""
        n = x.shape[1]
        first = cache.num_tokens
        slots, key_token, dist, in_window = self._step_layout(first, windows)
        # The episode boundary is at the z token: tokens before it keep the old episode start.
        allowed, cache.episode_start = ops.episode_mask(cache.episode_start, new_episode, key_token, in_window,
                                                        first + z_pos, z_pos)  # (B, n, S)
        for layer, kv, rel_pos in zip(self.layers, cache.kv, cache.rel_pos):
            heads = layer.attn.attend_step(layer.attn.qkv(x), kv, slots, rel_pos, self.u_bias, self.v_bias, dist,
                                           allowed)
            x = layer.residual(x, heads)
        cache.num_tokens += n
        return x

    def step_first(self, cache: KVCache, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Start sequences with the tokens z_0, a_0. z (B, z_dim), actions (B,) -> h_0 (B, dim)."""
        x = torch.stack([self.z_embed(z), self.a_embed(actions)], dim=1)
        return self._step_tokens(cache, x, self.first_step_windows, 0, None)[:, -1]

    def step(self, cache: KVCache, prev_reward: torch.Tensor, prev_done: torch.Tensor, z: torch.Tensor,
             actions: torch.Tensor) -> torch.Tensor:
        """One step: tokens r_{t-1}, z_t, a_t. prev_reward (B,), prev_done (B,) bool (an episode
        ended after step t-1, so z_t starts a new one), z (B, z_dim), actions (B,) -> h_t (B, dim)."""
        x = torch.stack([self.r_embed(prev_reward[:, None]), self.z_embed(z), self.a_embed(actions)], dim=1)
        return self._step_tokens(cache, x, self.step_windows, 1, prev_done)[:, -1]

    # ---- Loss (SPEC 3) ------------------------------------------------------------------------
    def loss(self, preds: dict[str, torch.Tensor], target_logits: torch.Tensor, target_weights: torch.Tensor,
             target_rewards: torch.Tensor, target_discounts: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Latent cross-entropy (weighted mean, unless config.dyn_latent_loss is off) + 10 * reward NLL
        + 50 * discount NLL. The cross-entropy is reported as dyn/z_ce either way.

        preds: the heads' outputs for the steps whose successors are the targets: z_logits
        (B, L, 32, 32), reward (B, L), discount_logit (B, L); target_logits (B, L, 32, 32) from
        the encoder; target_weights (B, L) zero where step t+1 follows a done; target_rewards,
        target_discounts (B, L) (discounts are 0.99 or 0, a soft Bernoulli target)."""
        c = self.config
        target_probs = torch.softmax(target_logits, dim=-1)
        log_probs = torch.log_softmax(preds["z_logits"], dim=-1)
        cross_entropy = -(target_probs * log_probs).sum(-1).sum(-1)                # (B, L)
        z_loss = (target_weights * cross_entropy).sum() / target_weights.sum().clamp_min(1.0)
        # Unit-variance Gaussian NLL, constant included (as torch.distributions.Normal.log_prob).
        reward_nll = (0.5 * (preds["reward"] - target_rewards).pow(2) + 0.5 * math.log(2 * math.pi)).mean()
        discount_nll = F.binary_cross_entropy_with_logits(preds["discount_logit"], target_discounts)
        loss = c.dyn_reward_coef * reward_nll + c.dyn_discount_coef * discount_nll
        if c.dyn_latent_loss:
            # Left out of the graph otherwise, as published: the latent head then gets no gradient at
            # all (None, not zeros), so Adam's weight decay does not move it either.
            loss = loss + c.dyn_z_coef * z_loss
        metrics = {"dyn/z_ce": z_loss.detach(), "dyn/reward_nll": reward_nll.detach(),
                   "dyn/discount_nll": discount_nll.detach(), "dyn/loss": loss.detach()}
        return loss, metrics
