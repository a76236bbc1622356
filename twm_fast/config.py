"""Every hyperparameter of TWM in one dataclass, with named presets and command-line overrides.

Values are those of SPEC.md (the paper plus the authors' published implementation); each field's
comment names the section. Presets are overlays on the defaults:

- ``paper``:     the paper: M = 800 imagined trajectories and the latent cross-entropy it describes;
                 where the paper is silent, the published code's behaviour (the defaults).
- ``published``: the released code as it runs: M = 400 and every selectable departure of README's
                 table "Departures from the published code" set to the published behaviour.
- ``quick``:     a small model and budget for the built-in Catch game on a CPU (minutes).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

# Dtypes imagination and the world-model update can run in (config.imagine_dtype, world_model_dtype).
IMAGINE_DTYPES = ("float32", "bfloat16")
WORLD_MODEL_DTYPES = ("float32", "bfloat16")
# The precision of fp32 products (config.matmul_precision; twm_fast/precision.py applies it).
MATMUL_PRECISIONS = ("auto", "high", "highest", "published")
# Where evaluation episodes are played (config.eval_env_backend; twm_fast.envs.vector).
EVAL_ENV_BACKENDS = ("auto", "vector", "single")
# Initialisations of the decoder's transposed convolutions (config.obs_decoder_init).
DECODER_INITS = ("pytorch", "kaiming")


@dataclass
class Config:
    # ---- Run ------------------------------------------------------------------------------
    game: str = "Pong"                  # Atari game name (e.g. "Pong", "MsPacman") or "catch" (built-in)
    seed: int = 0                       # seeds torch, numpy, the envs and the replay sampler
    device: str = "auto"                # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    replay_backend: str = "cpp"         # "cpp" (the C++ ring buffer) or "reference" (numpy twin)
    threads: int = 0                    # torch CPU threads; 0: chosen at start (train.choose_threads), then saved
    # fp32 products in cuBLAS, cuDNN and the kernels: "high" (TF32 tensor cores), "highest" (IEEE),
    # "published" (IEEE matmuls, TF32 convolutions, as the published code ran) or "auto" (high on a GPU,
    # highest on a CPU); resolved and saved in config.json (twm_fast/precision.py).
    matmul_precision: str = "auto"

    # ---- Environment (SPEC 1) ---------------------------------------------------------------
    frame_size: int = 64                # observations are frame_size x frame_size grayscale
    frame_skip: int = 4                 # agent step = 4 emulator frames, max-pooled over the last two
    frame_stack: int = 4                # the observation is the 4 latest frames
    noop_max: int = 30                  # 1..30 random no-ops after a reset (training env only)
    time_limit: int = 27_000            # agent steps (108k frames), then truncated=True
    episodic_lives: bool = True         # training env: a lost life is terminated=True
    # SPEC 7: after truncated=True the training env (with episodic lives) goes on with the same game,
    # as the published code's wrappers do (episodic lives inside the time limit); False starts a new game.
    continue_after_truncation: bool = True
    discount: float = 0.99              # gamma_t = 0.99 * (1 - terminated_t)
    gae_lambda: float = 0.95            # GAE lambda (SPEC 4)

    # ---- Replay and balanced sampling (SPEC 6, Eq. 6) ----------------------------------------
    env_steps: int = 100_000            # total agent steps of a run (Atari 100k); also the replay capacity
    prefill_steps: int = 5_000          # the first steps use a uniform random policy
    replay_temperature: float = 20.0    # tau of Eq. 6; math.inf gives uniform sampling

    # ---- Schedule (SPEC 7), budgets in "samples" (frames) ------------------------------------
    total_budget: float = 1e9           # samples of the whole run, pretraining included
    pretrain_budget: float = 5e7        # samples spent in pretraining on the prefill data
    pretrain_obs_fraction: float = 0.6  # observation model phase: 0.6 x 5e7 single frames
    pretrain_dyn_fraction: float = 0.3  # dynamics phase: 0.3 x 5e7 on frozen encodings
    # Actor-critic phase. The published code computes (1 - 0.6 + 0.3) = 0.7, which looks like a
    # sign slip for (1 - 0.6 - 0.3) = 0.1. We keep the published 0.7: the paper's scores were
    # produced with it. Set 0.1 to get the corrected reading.
    pretrain_ac_fraction: float = 0.7
    pretrain_obs_batch_size: int = 1_600  # single frames per observation-model pretraining batch (B*L)
    # How the phases spend these budgets (samples actually used, partial batches) is in
    # twm_fast/agent/pretraining.py, as the published code does it.
    eval_every: int = 5_000             # env steps between evaluations
    eval_episodes: int = 10             # episodes per periodic evaluation
    final_eval_episodes: int = 100      # episodes of the final evaluation
    eval_envs: int = 16                 # evaluation envs stepped at once, each playing its share of episodes
    eval_env_backend: str = "auto"      # "vector" (ale-py's AtariVectorEnv), "single", "auto" (vector for Atari)
    checkpoint_every: int = 5_000       # env steps between checkpoints
    keep_checkpoints: int = 2           # periodic checkpoints kept (the newest; resume falls back to an older one)
    max_skipped_updates: int = 20       # consecutive updates skipped for a non-finite loss that stop the run

    # ---- Observation model (SPEC 2) -----------------------------------------------------------
    z_categoricals: int = 32            # z is 32 categorical variables ...
    z_categories: int = 32              # ... with 32 classes each
    obs_channels: int = 48              # encoder channels 48, 96, 192, 384 (x1, x2, x4, x8)
    obs_hidden_dims: tuple = (512, 512)  # encoder MLP 1536 -> 512 -> 512 -> 1024
    obs_lr: float = 1e-4
    obs_eps: float = 1e-5
    obs_weight_decay: float = 1e-6
    obs_grad_clip: float = 100.0
    obs_entropy_coef: float = 5.0       # 5 * relu(0.1 - H(z) / (32 ln 32))
    obs_entropy_threshold: float = 0.1
    obs_consistency_coef: float = 0.01  # cross-entropy to the dynamics' predicted z distribution
    obs_decoder_coef: float = 1.0       # weight of the decoder's Gaussian NLL
    # SPEC 2: "pytorch" leaves the decoder's transposed convs at PyTorch's default init, as the published
    # initialiser (which skips them, so its last bias of 0.5 never applies) does; "kaiming" gives them
    # kaiming-uniform weights, zero biases and a last bias of 0.5.
    obs_decoder_init: str = "pytorch"

    # ---- Dynamics model (SPEC 3) ---------------------------------------------------------------
    wm_batch_size: int = 100            # B: windows per world-model update
    wm_sequence_length: int = 16        # L: steps per window (plus one context step and the next obs)
    memory_length: int = 16             # Transformer-XL memory in time steps (48 tokens + 2)
    dyn_embed_dim: int = 256            # model width
    dyn_num_layers: int = 10
    dyn_num_heads: int = 4
    dyn_head_dim: int = 64
    dyn_feedforward_dim: int = 1024
    dyn_dropout: float = 0.1
    dyn_z_head_dims: tuple = (512, 512, 512, 512)
    dyn_reward_head_dims: tuple = (256, 256, 256, 256)
    dyn_discount_head_dims: tuple = (256, 256, 256, 256)
    dyn_lr: float = 1e-4
    dyn_eps: float = 1e-5
    dyn_weight_decay: float = 1e-6
    dyn_grad_clip: float = 100.0
    dyn_z_coef: float = 1.0             # latent cross-entropy weight
    # SPEC 3: the paper's latent cross-entropy in the dynamics loss. False reproduces the published
    # loss, whose `'z' in preds` test drops it, so the latent head never trains (jrobine/twm issue #4).
    dyn_latent_loss: bool = True
    # SPEC 3: the published code builds the layers as deep copies of one initialised layer (all start
    # equal); False initialises each layer independently.
    dyn_identical_layers: bool = True
    dyn_reward_coef: float = 10.0       # reward NLL weight
    dyn_discount_coef: float = 50.0     # discount NLL weight
    # The world-model updates' forward passes: "float32" as published, or "bfloat16" autocast with
    # float32 weights, optimiser and losses, and channels-last convolutions (PERF.md's route to 12 ms).
    world_model_dtype: str = "float32"
    # On a GPU, capture the world-model update (forward, backward, clipping, Adam) in a CUDA graph and
    # replay it, as imagination is. Off until a GPU run has measured it (PERF.md: ~1,000 kernels).
    world_model_cuda_graph: bool = False

    # ---- Imagination and actor-critic (SPEC 4, 5) ---------------------------------------------
    imagine_batch_size: int = 800       # M: imagined trajectories per training step (paper 800, code 400)
    imagine_horizon: int = 15           # H
    imagine_discount_threshold: float = 0.1  # a rollout whose cumulative discount drops below it restarts
    imagine_cuda_graph: bool = True     # on a GPU, capture the rollout in a CUDA graph and replay it
    # The dtype imagination runs the dynamics model and the actor in. "float32" as published;
    # "bfloat16" runs copies of their weights, refreshed before each rollout (half the K/V cache
    # traffic, tensor-core GEMMs; PERF.md's route to 8 ms). Sampling and outputs stay fp32.
    imagine_dtype: str = "float32"
    actor_hidden_dims: tuple = (512, 512, 512, 512)
    critic_hidden_dims: tuple = (512, 512, 512, 512)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-5
    ac_eps: float = 1e-5
    ac_weight_decay: float = 1e-6
    ac_grad_clip: float = 1.0
    actor_entropy_coef: float = 0.01    # Eq. 5: 0.01 * relu(0.1 - mean(w * H(pi)) / ln(m))
    actor_entropy_threshold: float = 0.1

    # ---- Derived ------------------------------------------------------------------------------
    @property
    def replay_capacity(self) -> int:
        return self.env_steps

    def validate(self) -> "Config":
        """Raise ValueError naming the field and a fix when a value cannot work."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid config: {msg}")

        need(self.prefill_steps > self.wm_sequence_length + 1,
             f"prefill_steps={self.prefill_steps} must exceed wm_sequence_length + 1 "
             f"({self.wm_sequence_length + 1}) so that windows can be sampled")
        need(self.env_steps >= self.prefill_steps,
             f"env_steps={self.env_steps} must be >= prefill_steps={self.prefill_steps}")
        need(self.pretrain_obs_fraction + self.pretrain_dyn_fraction <= 1,
             "pretrain_obs_fraction + pretrain_dyn_fraction must be <= 1")
        need(self.replay_temperature > 0, "replay_temperature must be > 0 (use inf for uniform)")
        need(self.imagine_batch_size <= self.wm_batch_size * self.wm_sequence_length,
             f"imagine_batch_size={self.imagine_batch_size} exceeds the {self.wm_batch_size} x "
             f"{self.wm_sequence_length} start candidates of a batch")
        need(self.dyn_num_heads * self.dyn_head_dim == self.dyn_embed_dim,
             "dyn_num_heads * dyn_head_dim must equal dyn_embed_dim")
        need(self.total_budget > self.pretrain_budget, "total_budget must exceed pretrain_budget")
        need(self.frame_size == 64, "the observation model's conv stack expects frame_size=64")
        need(self.threads >= 0, f"threads={self.threads} must be >= 0 (0: chosen for the machine)")
        need(self.world_model_dtype in WORLD_MODEL_DTYPES,
             f"world_model_dtype={self.world_model_dtype!r} must be one of {', '.join(WORLD_MODEL_DTYPES)}")
        need(self.matmul_precision in MATMUL_PRECISIONS,
             f"matmul_precision={self.matmul_precision!r} must be one of {', '.join(MATMUL_PRECISIONS)}")
        need(self.eval_envs >= 1, f"eval_envs={self.eval_envs} must be at least 1")
        need(self.eval_env_backend in EVAL_ENV_BACKENDS,
             f"eval_env_backend={self.eval_env_backend!r} must be one of {', '.join(EVAL_ENV_BACKENDS)}")
        need(self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints} must be at least 1")
        need(self.max_skipped_updates >= 1, f"max_skipped_updates={self.max_skipped_updates} must be at least 1")
        need(self.imagine_dtype in IMAGINE_DTYPES,
             f"imagine_dtype={self.imagine_dtype!r} must be one of {', '.join(IMAGINE_DTYPES)}")
        need(self.obs_decoder_init in DECODER_INITS,
             f"obs_decoder_init={self.obs_decoder_init!r} must be one of {', '.join(DECODER_INITS)}")
        need(self.prefill_steps > self.imagine_horizon + 1,
             f"prefill_steps={self.prefill_steps} must exceed imagine_horizon + 1 ({self.imagine_horizon + 1}) "
             "so that actor-critic pretraining has windows")
        return self

    # ---- Schedule arithmetic (SPEC 7) ------------------------------------------------------------
    @property
    def samples_per_train_step(self) -> int:
        """A training step costs B*L world-model samples plus M*H imagined samples."""
        return (self.wm_batch_size * self.wm_sequence_length
                + self.imagine_batch_size * self.imagine_horizon)

    @property
    def num_train_steps(self) -> int:
        """Training steps of the main loop: (total - pretraining budget) / cost of a step."""
        return round((self.total_budget - self.pretrain_budget) / self.samples_per_train_step)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name: f for f in fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; {_close_names_hint(unknown[0], known)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)


# Presets are overlays on the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"imagine_batch_size": 800, "dyn_latent_loss": True},
    # Every selectable departure at the released code's value, also those whose default already is.
    "published": {"imagine_batch_size": 400, "dyn_latent_loss": False, "dyn_identical_layers": True,
                  "obs_decoder_init": "pytorch", "continue_after_truncation": True, "pretrain_ac_fraction": 0.7,
                  "world_model_dtype": "float32", "imagine_dtype": "float32", "matmul_precision": "published"},
    # Small enough that the built-in Catch game is learned in a few minutes on 2 CPU cores: 2,500
    # training steps over 6,000 collected steps. It keeps the default of every departure from the
    # published code but M (README's table), so the learning test trains with the behaviour of a
    # paper run (measured: final mean return 3.1 and 3.6 for seeds 0 and 1; 4.3 and 3.3 with the
    # earlier kaiming decoder, independent layers and nominal pretraining counts; random policy -2.6).
    # The actor's learning rate stays at the paper's 1e-4: faster, its entropy collapses before the
    # world model predicts rewards.
    "quick": {
        "game": "catch",
        "env_steps": 7_000,
        "prefill_steps": 1_000,
        "noop_max": 0,
        "time_limit": 1_000,
        "total_budget": 1.98e6,
        "pretrain_budget": 6e4,
        "pretrain_obs_batch_size": 256,
        "eval_every": 1_000,
        "eval_episodes": 10,
        "final_eval_episodes": 20,
        "checkpoint_every": 1_000,
        "z_categoricals": 16,
        "z_categories": 16,
        "obs_channels": 8,
        "obs_hidden_dims": (128,),
        "wm_batch_size": 16,
        "wm_sequence_length": 8,
        "memory_length": 8,
        "dyn_embed_dim": 64,
        "dyn_num_layers": 2,
        "dyn_num_heads": 2,
        "dyn_head_dim": 32,
        "dyn_feedforward_dim": 128,
        "dyn_z_head_dims": (128,),
        "dyn_reward_head_dims": (64,),
        "dyn_discount_head_dims": (64,),
        "obs_lr": 1e-3,
        "dyn_lr": 5e-4,
        "imagine_batch_size": 64,
        "imagine_horizon": 10,
        "actor_hidden_dims": (128, 128),
        "critic_hidden_dims": (128, 128),
        "actor_lr": 1e-4,
        "critic_lr": 1e-4,
    },
}


def _close_names_hint(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(close)}?"
    return f"valid names: {', '.join(sorted(choices))}"


def _parse_value(name: str, text: str, current: Any) -> Any:
    """Parse an override string into the type of the field's current value."""
    try:
        if isinstance(current, bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(float(text)) if text.lower() not in ("inf",) else math.inf
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return tuple(int(x) for x in text.strip("()[] ").split(",") if x.strip())
        return text
    except ValueError:
        raise ValueError(
            f"cannot parse {name}={text!r} as {type(current).__name__}; "
            f"e.g. {name}={current if not isinstance(current, tuple) else ','.join(map(str, current))}"
        ) from None


def make_config(preset: str = "paper", overrides: dict[str, str] | list[str] | None = None,
                **values: Any) -> Config:
    """Defaults, then the preset's overlay, then overrides ("name=value" strings or a dict)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = Config(**PRESETS[preset])
    known = {f.name for f in fields(Config)}
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, dict):
        items += list(overrides.items())
    elif overrides:
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like name=value, e.g. imagine_batch_size=400")
            k, v = item.split("=", 1)
            items.append((k.strip(), v.strip()))
    items += list(values.items())
    for k, v in items:
        if k not in known:
            raise ValueError(f"unknown config field {k!r}; {_close_names_hint(k, known)}")
        if isinstance(v, str):
            v = _parse_value(k, v, getattr(cfg, k))
        setattr(cfg, k, v)
    return cfg.validate()
