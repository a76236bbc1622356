"""Many evaluation envs stepped at once (SPEC 1's evaluation protocol), behind one API.

``make_eval_envs(game, seeds, config)`` returns ``EvalEnvs``, one env per seed:

- ``reset() -> obs``: uint8 (num_envs, frame_stack, 64, 64), every env at the start of an episode;
- ``step(actions) -> EvalStep``: ``actions`` (num_envs,) ints. Only the envs that were ``ready`` take
  their action; the others ignore it. An env whose episode ended starts the next one by itself.

``EvalStep`` says per env whether it finished an agent step in this call (``stepped``: then
``rewards``, ``terminated`` and ``truncated`` are that step's) and whether it waits for an action
(``ready``: then ``obs`` is what the agent acts on). The two differ only for ``AtariVectorEnvs``,
which sometimes spends a call on a FIRE press the single env hides inside one of its steps.

Two implementations, with equal observations and rewards for the same seeds and actions
(``tests/test_vector_env.py``):

- ``AtariVectorEnvs``: ale-py's ``AtariVectorEnv`` (the emulators step in C++ threads, in
  parallel) for the Atari games;
- ``SingleEnvs``: ``num_envs`` of ``make_env``'s envs stepped one after the other in Python, for
  Catch or where ale-py has no vector env.
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple, Protocol

import numpy as np

from twm_fast.config import Config
from twm_fast.envs import canonical_game, make_env
from twm_fast.envs.atari import FIRE, import_gymnasium

# ALE counts its own episode limit in emulator frames; ours counts agent steps (AgentEnv's
# time_limit), so ALE's is set out of reach. (Its int32 counter starts at this value + 1.)
_NO_FRAME_LIMIT = 10 ** 9


class EvalStep(NamedTuple):
    obs: np.ndarray          # (N, frame_stack, H, W) uint8; valid where ready
    ready: np.ndarray        # (N,) bool: the env takes an action in the next step()
    stepped: np.ndarray      # (N,) bool: the env finished an agent step in this call
    rewards: np.ndarray      # (N,) float64 raw game score of that step (0 where not stepped)
    terminated: np.ndarray   # (N,) bool: game over at that step
    truncated: np.ndarray    # (N,) bool: the time limit was reached at that step


class EvalEnvs(Protocol):
    num_envs: int
    num_actions: int

    def reset(self) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> EvalStep: ...

    def close(self) -> None: ...


class SingleEnvs:
    """``make_env``'s evaluation envs (``train=False``), one per seed, stepped one after the other."""

    def __init__(self, game: str, seeds: list[int], config: Config):
        self.envs = [make_env(game, seed=seed, train=False, config=config) for seed in seeds]
        self.num_envs = len(self.envs)
        self.num_actions = self.envs[0].num_actions
        self._obs: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        self._obs = np.stack([env.reset()[0] for env in self.envs])
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> EvalStep:
        n = self.num_envs
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated[i], truncated[i], _ = env.step(int(actions[i]))
            self._obs[i] = env.reset()[0] if terminated[i] or truncated[i] else obs
        everyone = np.ones(n, bool)
        return EvalStep(self._obs.copy(), everyone, everyone, rewards, terminated, truncated)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def vector_env_class():
    """ale-py's AtariVectorEnv, or None where the installed ale-py has none (before 0.11)."""
    import_gymnasium()  # the install hint, if the Atari packages are missing
    try:
        from ale_py.vector_env import AtariVectorEnv
    except ImportError:
        return None
    return AtariVectorEnv


def ale_rom_name(game: str) -> str:
    """The ROM name ale-py's vector env takes: "MsPacman" -> "ms_pacman"."""
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(game))


class AtariVectorEnvs:
    """Atari evaluation envs on ale-py's ``AtariVectorEnv``, with the semantics of ``make_env``'s
    (``AgentEnv`` over ``AtariGame``, ``train=False``) step for step.

    The vector env does in C++ what is the same in both: emulator frame skip 4 with max-pooling of
    the last two frames, grayscale, the 64 x 64 INTER_AREA resize, no sticky actions, the minimal
    action set, unclipped rewards, no no-ops and no episodic lives. What it does differently is done
    here, per env, in Python:

    - FIRE games: after each reset SPEC 1 presses FIRE and then action 2 as two full agent steps;
      ALE's ``use_fire_reset`` presses FIRE for one frame only. After a lost life SPEC 1 presses FIRE
      once more inside the agent's step; ALE does not. Both become forced actions: the env spends a
      ``step()`` call on them (it is not ``ready``), and a life-loss FIRE adds its reward to the agent
      step it completes. (A FIRE after game over is skipped: ALE ignores actions on a finished game.)
    - The frame stack: ALE fills a reset's stack with black frames, ``AgentEnv`` with copies of the
      first frame, and a life-loss FIRE shifts in one frame, not two. So the vector env returns single
      frames (``stack_num=1``) and the stack is kept here.
    - The time limit counts agent steps, as ``AgentEnv`` does, not emulator frames (ALE's would also
      count the FIRE presses).
    """

    def __init__(self, game: str, seeds: list[int], config: Config, num_threads: int = 0):
        vector_env = vector_env_class()
        if vector_env is None:
            raise ImportError("ale-py's AtariVectorEnv needs ale-py >= 0.11: pip install -U ale-py")
        name = canonical_game(game)
        self.env = vector_env(
            ale_rom_name(name), len(seeds), num_threads=num_threads, img_height=config.frame_size,
            img_width=config.frame_size, grayscale=True, stack_num=1, frameskip=config.frame_skip,
            maxpool=True, noop_max=0, episodic_life=False, life_loss_info=False, reward_clipping=False,
            use_fire_reset=False, repeat_action_probability=0.0, full_action_space=False,
            max_num_frames_per_episode=_NO_FRAME_LIMIT, autoreset_mode="SameStep")
        self.num_envs = len(seeds)
        self.num_actions = int(self.env.single_action_space.n)
        # As AtariGame: a game whose action 1 is FIRE presses it after resets and lost lives.
        self.has_fire = self.env.ale.get_action_set()[FIRE].name == "FIRE"
        self._seeds = np.asarray(seeds, dtype=np.int64)
        self._time_limit = config.time_limit
        n, size = self.num_envs, config.frame_size
        self._stack = np.zeros((n, config.frame_stack, size, size), np.uint8)
        self._pending = [deque() for _ in range(n)]  # forced actions, sent before the agent's next
        self._finishing = np.zeros(n, bool)   # the pending FIRE completes an agent step (a lost life)
        self._step_reward = np.zeros(n)       # reward of the agent step in progress
        self._steps = np.zeros(n, np.int64)   # agent steps since the episode started
        self._fire_lives = np.zeros(n, np.int64)  # lives after the last agent step (AtariGame's)

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset(seed=self._seeds)
        for i in range(self.num_envs):
            self._start_episode(i, obs[i, 0], info["lives"][i])
        # Every env starts with the same forced actions, so they all become ready together.
        while any(self._pending):
            step = self.step(np.zeros(self.num_envs, np.int64))
            assert not step.stepped.any()
        return self._stack.copy()

    def step(self, actions: np.ndarray) -> EvalStep:
        n = self.num_envs
        forced = np.array([bool(p) for p in self._pending])
        send = np.asarray(actions, dtype=np.int64).copy()
        for i in np.flatnonzero(forced):
            send[i] = self._pending[i].popleft()
        obs, rewards, terminated, _, info = self.env.step(send)
        frames, lives = obs[:, 0], info["lives"]
        out = {"stepped": np.zeros(n, bool), "rewards": np.zeros(n), "terminated": np.zeros(n, bool),
               "truncated": np.zeros(n, bool)}
        to_reset = []
        for i in range(n):
            if forced[i] and not self._finishing[i]:
                # FIRE or action 2 after a reset. A game that ends here was reset by the vector env
                # (SameStep); the remaining presses go on in the new game, as in AtariGame._fire_reset.
                if not self._pending[i]:
                    self._begin(i, frames[i], lives[i])
                continue
            if forced[i]:                                       # the FIRE after a lost life
                self._finishing[i] = False
                self._step_reward[i] += rewards[i]
            else:                                               # the agent's own action
                self._step_reward[i] = rewards[i]
                life_lost = lives[i] < self._fire_lives[i]
                self._fire_lives[i] = lives[i]
                if self.has_fire and life_lost and not terminated[i]:
                    self._pending[i].append(FIRE)
                    self._finishing[i] = True
                    continue
            self._steps[i] += 1
            out["stepped"][i] = True
            out["rewards"][i] = self._step_reward[i]
            out["terminated"][i] = terminated[i]
            out["truncated"][i] = self._steps[i] >= self._time_limit
            if terminated[i]:                 # already reset by the vector env: the new game's frame
                self._start_episode(i, frames[i], lives[i])
            elif out["truncated"][i]:         # the game goes on in the emulator: reset it below
                to_reset.append(i)
            else:
                self._stack[i, :-1] = self._stack[i, 1:]
                self._stack[i, -1] = frames[i]
        if to_reset:
            mask = np.zeros(n, bool)
            mask[to_reset] = True
            obs, info = self.env.reset(options={"reset_mask": mask})
            for i in to_reset:
                self._start_episode(i, obs[i, 0], info["lives"][i])
        ready = np.array([not p for p in self._pending])
        return EvalStep(self._stack.copy(), ready, **out)

    def _start_episode(self, i: int, frame: np.ndarray, lives: int) -> None:
        """A new game has just been reset in env i: queue FIRE and action 2, or begin at once."""
        self._finishing[i] = False
        if self.has_fire:
            self._pending[i].extend((FIRE, 2))
        else:
            self._begin(i, frame, lives)

    def _begin(self, i: int, frame: np.ndarray, lives: int) -> None:
        """Env i waits for the agent's first action of an episode; its stack is copies of `frame`."""
        self._stack[i] = frame
        self._steps[i] = 0
        self._fire_lives[i] = lives

    def close(self) -> None:
        self.env.close()


def make_eval_envs(game: str, seeds: list[int], config: Config, backend: str = "auto",
                   num_threads: int = 0) -> EvalEnvs:
    """Evaluation envs of ``game``, one per seed.

    backend: "vector" (ale-py's AtariVectorEnv; Atari only), "single" (``make_env``'s envs in a
        Python loop) or "auto" (vector for an Atari game where ale-py has it, else single).
    num_threads: the vector env's C++ threads; 0 for one per env up to the machine's cores.
    """
    if backend not in ("auto", "vector", "single"):
        raise ValueError(f"unknown eval env backend {backend!r}; use auto, vector or single")
    atari = canonical_game(game) != "catch"
    if backend == "vector" and not atari:
        raise ValueError(f"{game} has no vector env (ale-py's is for Atari games); use eval_env_backend=single "
                         "or auto")
    if backend == "vector" or (backend == "auto" and atari and vector_env_class() is not None):
        return AtariVectorEnvs(game, seeds, config, num_threads=num_threads)
    return SingleEnvs(game, seeds, config)


__all__ = ["AtariVectorEnvs", "EvalEnvs", "EvalStep", "SingleEnvs", "make_eval_envs"]
