"""The learned world model as an environment: play, watch or train another agent inside the dream.

``Dream`` steps the K/V-cached dynamics model one step at a time for a small batch of sequences, with
the very calls imagination makes (``DynamicsModel.step_first`` then ``step``, SPEC 5.3) and its
randomness as an input. ``DreamEnv`` is one such sequence as a ``gymnasium.Env``:

- reset: a real observation (a reset of the game, a random observation of a replay file, or
  ``options={"obs": ...}``) is encoded to the mode of z, as acting does (SPEC 7);
- step(a): one cached dynamics step on (r_{t-1}, z_t, a_t); z_{t+1} is sampled from the latent head,
  the reward is the reward head's mean and the discount g_t = clip(sigmoid(logit), 0, 1) as in
  imagination (SPEC 5.3);
- observation: the decoded frame stack, uint8 (4, 64, 64) like the real env's, or z itself
  (``latent=True``, the actor's input);
- termination: see ``TERMINATIONS``.

The reward is what the reward head predicts: the mean of tanh(r) (SPEC 1: the model learns tanh of
the game's reward), not the raw game score.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch

from twm_fast.models.dynamics import TOKENS_PER_STEP, DynamicsModel, RelativeSelfAttention
from twm_fast.models.obs_model import ObservationModel
from twm_fast.reference.attention import rel_attention_probs_ref
from twm_fast.video import frames_to_uint8, viewing_fps

# How the discount head ends a dream. The head is a Bernoulli over "the episode goes on", trained on
# the soft target gamma_t = 0.99 * (1 - terminated_t) (SPEC 3), so P(terminated) = 1 - g_t / 0.99.
# - "mode" (the default): terminated when P(terminated) > 1/2, the head's most likely outcome. Imagination
#   never samples an ending either (it weights steps by the discounts, SPEC 4), and sampling would end
#   dreams at random wherever the model is unsure: a P(terminated) of 2% on every step ends a dream
#   after about 50 steps although no single step is more likely an ending than not.
# - "sample": terminated with probability P(terminated), from uniform noise (the generative reading).
TERMINATIONS = ("mode", "sample")


@dataclass
class DreamStep:
    """One dreamed step of a batch of B sequences.

    z: (B, z_dim) the sampled next latent z_{t+1}; z_logits: (B, 32, 32) its distribution; reward:
    (B,) predicted reward (mean of tanh(r)); discount: (B,) g_t; termination_probability: (B,)
    1 - g_t / gamma; terminated: (B,) bool; attention: None, or (B, H, memory_length + 2, 3) the
    a_t token's attention probabilities in the recorded layer, per step offset (t - memory_length - 1
    .. t, oldest first) and token kind (z, a, r), 0 where there is no key it may see; attention_visible:
    (B, memory_length + 2, 3) bool, where there is one (see ``attention_by_step``).
    """

    z: torch.Tensor
    z_logits: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    termination_probability: torch.Tensor
    terminated: torch.Tensor
    attention: torch.Tensor | None = None
    attention_visible: torch.Tensor | None = None


@contextmanager
def _recorded_attention(attn: RelativeSelfAttention, record: list):
    """While active, every cached step of this layer also appends its attention probabilities
    (B, H, n, S) and distances (n, S) to `record`. The fast kernels return only the attended values,
    so the probabilities are recomputed with the reference twin from the very arguments the step's
    attention received (after its K/V write); what the layer computes is unchanged."""
    attend_step = attn.attend_step
    wrapped_before = "attend_step" in vars(attn)  # another recorder (or a test's spy) is active

    def recording(qkv, kv, slots, rel_pos, u_bias, v_bias, dist, allowed):
        heads = attend_step(qkv, kv, slots, rel_pos, u_bias, v_bias, dist, allowed)
        probs = rel_attention_probs_ref(qkv[:, :, 0], kv[:, :, 0], rel_pos, u_bias, v_bias, dist, allowed, attn.scale)
        record.append((probs, dist, allowed))
        return heads

    attn.attend_step = recording
    try:
        yield
    finally:
        if wrapped_before:
            attn.attend_step = attend_step
        else:
            del attn.attend_step


def attention_by_step(probs: torch.Tensor, dist: torch.Tensor, allowed: torch.Tensor,
                      memory_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The a_t token's attention (the last query of a cached step) laid out per step and token kind.

    probs: (B, H, n, S); dist: (n, S) query minus key token index; allowed: (B, n, S).
    Returns the probabilities (B, H, memory_length + 2, 3), where column c is step t - memory_length - 1 + c
    and row k the token kind (z, a, r), and which cells hold a key the token may see (B, memory_length + 2, 3)
    bool: none before the episode's start or for r_t, which is not an input yet; the others hold 0. An a token sees 3 * (memory_length + 1) keys before it (SPEC 3), which
    reach back to the action and reward of step t - memory_length - 1.
    """
    batch, heads = probs.shape[:2]
    columns = memory_length + 2
    d = dist[-1]                                                      # (S,) distance from a_t
    # Token a_t has index 3t + 1; the key 3t + 1 - d is of step t + floor((1 - d) / 3), kind (1 - d) mod 3.
    offset = torch.div(1 - d, TOKENS_PER_STEP, rounding_mode="floor")
    kind = (1 - d) % TOKENS_PER_STEP
    column = offset + columns - 1
    visible = allowed[:, -1] & (column >= 0) & (column < columns)    # (B, S)
    grid = probs.new_zeros((batch, heads, columns * TOKENS_PER_STEP))
    cells = torch.zeros(batch, columns * TOKENS_PER_STEP, dtype=torch.bool, device=probs.device)
    cell = column.clamp(0, columns - 1) * TOKENS_PER_STEP + kind                     # (S,)
    for b in range(batch):
        grid[b][:, cell[visible[b]]] = probs[b, :, -1][:, visible[b]]
        cells[b, cell[visible[b]]] = True
    return grid.view(batch, heads, columns, TOKENS_PER_STEP), cells.view(batch, columns, TOKENS_PER_STEP)


class Dream:
    """The world model stepped one step at a time for B sequences in lockstep (no gradients).

    ``start(z)`` begins B dreams at the latents z (B, z_dim); each ``step`` takes the actions and the
    noise of its samples and returns a ``DreamStep``. The transformer's state is the K/V cache of
    ``DynamicsModel.new_cache``; a sequence never crosses an episode boundary (a new start is a new
    cache), so every step's previous-done input is False.
    """

    def __init__(self, obs_model: ObservationModel, dynamics: DynamicsModel, *, termination: str = "mode",
                 gamma: float | None = None):
        if termination not in TERMINATIONS:
            raise ValueError(f"termination={termination!r} must be one of {', '.join(TERMINATIONS)}")
        self.obs_model = obs_model.eval()
        self.dynamics = dynamics.eval()
        self.termination = termination
        self.gamma = dynamics.config.discount if gamma is None else gamma
        self.cache = None
        self.z: torch.Tensor | None = None           # (B, z_dim) the current latent z_t
        self._prev_reward: torch.Tensor | None = None  # r_{t-1}, None before the first step
        self.steps = 0

    @property
    def device(self) -> torch.device:
        return self.dynamics.u_bias.device

    @torch.no_grad()
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Real observations (B, 4, 64, 64) uint8 -> the mode of z (B, z_dim), as acting encodes (SPEC 7)."""
        return self.obs_model.sample(self.obs_model.encode(obs.to(self.device)), "argmax")[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim) -> the decoded frame stacks (B, 4, 64, 64), floats (0 black, 1 white)."""
        return self.obs_model.decode(z)

    def start(self, z: torch.Tensor) -> None:
        """Begin B dreams at z (B, z_dim)."""
        self.cache = self.dynamics.new_cache(z.shape[0])
        self.z = z.to(self.device, torch.float32)
        self._prev_reward = None
        self.steps = 0

    def noise_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of a step's latent noise (B, 32, 32) and termination noise (B,)."""
        batch = self.z.shape[0]
        return (batch, self.obs_model.num_vars, self.obs_model.num_classes), (batch,)

    @torch.no_grad()
    def step(self, actions: torch.Tensor, latent_noise: torch.Tensor, termination_noise: torch.Tensor | None = None,
             attention_layer: int | None = None) -> DreamStep:
        """One step of every dream.

        actions: (B,) int64; latent_noise: (B, 32, 32) uniform in (0, 1), for z_{t+1}; termination_noise:
        (B,) uniform, used with termination="sample"; attention_layer: record that layer's attention.
        """
        if self.cache is None:
            raise RuntimeError("call start(z) before step()")
        if self.termination == "sample" and termination_noise is None:
            raise ValueError('termination="sample" needs termination_noise')
        dyn = self.dynamics
        actions = actions.to(self.device)
        record: list = []
        layer = None if attention_layer is None else dyn.layers[attention_layer].attn
        with _recorded_attention(layer, record) if layer is not None else nullcontext():
            if self._prev_reward is None:
                h = dyn.step_first(self.cache, self.z, actions)
            else:
                no_done = torch.zeros(self.z.shape[0], dtype=torch.bool, device=self.device)
                h = dyn.step(self.cache, self._prev_reward, no_done, self.z, actions)
        preds = dyn.predict(h)
        z_logits = preds["z_logits"].float()
        next_z = self.obs_model.sample(z_logits, "sample", latent_noise.to(self.device))[0]
        reward = preds["reward"].float()
        discount = torch.sigmoid(preds["discount_logit"].float()).clamp(0.0, 1.0)
        p_end = (1 - discount / self.gamma).clamp(0.0, 1.0)
        if self.termination == "mode":
            terminated = p_end > 0.5
        else:
            terminated = termination_noise.to(self.device) < p_end
        attention = visible = None
        if record:
            probs, dist, allowed = record[-1]
            attention, visible = attention_by_step(probs, dist, allowed, dyn.memory_length)
        self.z, self._prev_reward = next_z, reward
        self.steps += 1
        return DreamStep(next_z, z_logits, reward, discount, p_end, terminated, attention, visible)


class DreamEnv(gymnasium.Env):
    """The world model of a trained agent as a gymnasium environment (one dream, B = 1).

    agent: a ``twm_fast.agent.agent.Agent`` (or anything with ``obs_model``, ``dynamics``, ``config``
        and ``num_actions``); its models are used as they are, on their device, in eval mode.
    start: where a reset gets its real observation: "game" (a reset of the real game, the training
        env of SPEC 1, seeded from the env's generator), or a replay (a replay object or the path of a
        ``.replay`` file: a uniformly random stored observation). ``reset(options={"obs": obs})``
        starts from a given uint8 (4, 64, 64) observation instead.
    latent: observe z (float32 one-hot, (z_dim,)) instead of the decoded frame stack.
    termination: "mode" or "sample" (see ``TERMINATIONS``).
    max_episode_steps: truncated=True after this many steps (default: the config's time limit).
    attention_layer: record that layer's attention in ``info["attention"]`` (H, memory_length + 2, 3)
        and ``info["attention_visible"]`` (see ``DreamStep``).
    render_mode: None or "rgb_array" (the newest decoded frame as (64, 64, 3) uint8).

    Randomness: ``reset(seed=...)`` seeds a torch generator that draws each step's noise; a step with
    given noise is ``step_with_noise``.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 15}  # instances: viewing_fps(game)

    def __init__(self, agent, *, start: Any = "game", latent: bool = False, termination: str = "mode",
                 max_episode_steps: int | None = None, attention_layer: int | None = None,
                 render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} must be None or 'rgb_array'")
        self.agent = agent
        self.config = agent.config
        self.metadata = {**self.metadata, "render_fps": viewing_fps(self.config.game)}
        self.dream = Dream(agent.obs_model, agent.dynamics, termination=termination)
        self.latent = latent
        self.render_mode = render_mode
        self.max_episode_steps = self.config.time_limit if max_episode_steps is None else max_episode_steps
        num_layers = len(agent.dynamics.layers)
        if attention_layer is not None and not 0 <= attention_layer < num_layers:
            raise ValueError(f"attention_layer={attention_layer} must be in [0, {num_layers})")
        self.attention_layer = attention_layer
        self.action_space = gymnasium.spaces.Discrete(agent.num_actions)
        c = self.config
        if latent:
            z_dim = c.z_categoricals * c.z_categories
            self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (z_dim,), np.float32)
        else:
            self.observation_space = gymnasium.spaces.Box(0, 255, (c.frame_stack, c.frame_size, c.frame_size),
                                                          np.uint8)
        self._replay = None
        self._game = None                       # the real env of start="game"
        if isinstance(start, str) and start == "game":
            from twm_fast.envs import make_env  # imported here: only start="game" needs the game
            # Every reset passes its own seed; this one only seeds the unused action_space.sample().
            self._game = make_env(c.game, seed=0, train=True, config=c)
            self.action_meanings = list(self._game.action_meanings)
        else:
            self._replay = _open_replay(start, c)
            self.action_meanings = game_action_meanings(c, agent.num_actions)
        self._generator: torch.Generator | None = None
        self._frames: np.ndarray | None = None  # the decoded stack of the current z, uint8 (4, 64, 64)
        self.last_step: DreamStep | None = None

    # ---- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._generator = torch.Generator(device=self.dream.device)
        self._generator.manual_seed(int(self.np_random.integers(2 ** 63 - 1)))
        obs = None if options is None else options.get("obs")
        if obs is None:
            obs = self._real_start()
        obs = np.asarray(obs, dtype=np.uint8)
        c = self.config
        if obs.shape != (c.frame_stack, c.frame_size, c.frame_size):
            raise ValueError(f"the start observation must be uint8 {(c.frame_stack, c.frame_size, c.frame_size)}, "
                             f"got shape {obs.shape}")
        z = self.dream.encode(torch.as_tensor(obs[None]))
        self.dream.start(z)
        self._frames = None
        return self._observation(), {"start_obs": obs}

    def step(self, action):
        if self.dream.cache is None:
            raise RuntimeError("call reset() before step()")
        latent_shape, termination_shape = self.dream.noise_shapes()
        g = self._generator
        latent_noise = torch.rand(latent_shape, generator=g, device=g.device)
        termination_noise = torch.rand(termination_shape, generator=g, device=g.device)
        return self.step_with_noise(action, latent_noise, termination_noise)

    def step_with_noise(self, action, latent_noise: torch.Tensor, termination_noise: torch.Tensor | None = None):
        """``step`` with the step's noise given: latent_noise (1, 32, 32) and termination_noise (1,),
        uniform in (0, 1)."""
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action {action!r} is not in Discrete({self.action_space.n})")
        actions = torch.tensor([int(action)], device=self.dream.device)
        out = self.dream.step(actions, latent_noise, termination_noise, self.attention_layer)
        self.last_step = out
        self._frames = None
        info = {"discount": float(out.discount[0]), "termination_probability": float(out.termination_probability[0])}
        if out.attention is not None:
            info["attention"] = out.attention[0].cpu().numpy()
            info["attention_visible"] = out.attention_visible[0].cpu().numpy()
        truncated = self.dream.steps >= self.max_episode_steps
        return self._observation(), float(out.reward[0]), bool(out.terminated[0]), truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return np.repeat(self.frames()[-1][..., None], 3, axis=-1)

    # ---- What the page and other code read --------------------------------------------------------
    @property
    def z(self) -> torch.Tensor:
        """The current latent z_t, (1, z_dim) on the model's device: what the actor acts on."""
        return self.dream.z

    def frames(self) -> np.ndarray:
        """The decoded frame stack of the current latent, uint8 (4, 64, 64)."""
        if self._frames is None:
            self._frames = frames_to_uint8(self.dream.decode(self.dream.z))[0]
        return self._frames

    # ---- Helpers ------------------------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        if self.latent:
            return self.dream.z[0].cpu().numpy().astype(np.float32)
        return self.frames()

    def _real_start(self) -> np.ndarray:
        seed = int(self.np_random.integers(2 ** 31 - 1))
        if self._replay is not None:
            first, last = self._replay.first_step, self._replay.total_steps
            index = int(np.random.default_rng(seed).integers(first, last + 1))
            return self._replay.read_obs(np.array([index]))[0]
        return self._game.reset(seed=seed)[0]

    def close(self):
        if self._game is not None:
            self._game.close()
            self._game = None


def game_action_meanings(config, num_actions: int) -> list[str]:
    """The meanings of the game's actions ("NOOP", "FIRE", ...); the action numbers as strings for an
    Atari game when ale-py is not installed (a dream from a replay file needs no emulator)."""
    from twm_fast.envs import make_env

    try:
        env = make_env(config.game, seed=0, train=False, config=config)
    except ImportError:
        return [str(i) for i in range(num_actions)]
    meanings = list(env.action_meanings)
    env.close()
    return meanings


def _open_replay(start, config):
    """A replay object as given, or the replay file at a path."""
    if hasattr(start, "read_obs"):
        return start
    from twm_fast.replay import replay_class
    path = Path(start)
    if not path.is_file():
        raise FileNotFoundError(f"start={str(start)!r} is neither 'game' nor a replay file (e.g. "
                                "checkpoints/final.replay next to a checkpoint)")
    return replay_class(config.replay_backend).load(str(path))


def make_dream_env(checkpoint: str, *, device: str = "auto", start: Any = "game", **kwargs) -> DreamEnv:
    """The ``DreamEnv`` of a checkpoint (a .pt file or a run directory); ``start="replay"`` starts from
    the checkpoint's own replay file. Other arguments as ``DreamEnv``. This is the entry point of
    ``gymnasium.make("twm_fast/Dream-v0", checkpoint=...)``."""
    from twm_fast.evaluate import load_agent

    agent, _, payload = load_agent(checkpoint, device)
    if isinstance(start, str) and start == "replay":
        start = Path(payload["path"]).with_name(payload["replay_file"])
    return DreamEnv(agent, start=start, **kwargs)


# gymnasium.make("twm_fast/Dream-v0", checkpoint=...) once this module is imported.
gymnasium.register("twm_fast/Dream-v0", entry_point="twm_fast.dream:make_dream_env")
