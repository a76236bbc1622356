"""Environments behind one API: the Atari 100k games (SPEC 1) and the built-in Catch game.

``make_env(game, seed=..., train=..., config=...)`` returns an ``AgentEnv``:

- ``reset(seed=None) -> (obs, info)`` and ``step(action) -> (obs, reward, terminated, truncated, info)``,
  where ``obs`` is uint8 (frame_stack, 64, 64), the latest frames oldest first, ``reward`` the raw
  game score and ``info["lives"]`` the lives (Catch: balls) left;
- ``num_actions``, ``action_space`` (``.n``, ``.sample()``) and ``action_meanings``.

Frame-stack contract (the replay buffer relies on it): ``reset()`` returns ``frame_stack`` copies of
one frame, and each ``step`` shifts in exactly one new frame. The caller calls ``reset()`` after every
step that returned ``terminated`` or ``truncated``.

gymnasium and ale-py are imported only when an Atari game is made.
"""
from __future__ import annotations

import difflib
from typing import Any, Protocol

import numpy as np

from twm_fast.config import Config
from twm_fast.envs.atari import ATARI_100K_GAMES, INSTALL_HINT, NOOP, AtariGame, ale_game_names
from twm_fast.envs.catch import CatchGame

__all__ = ["ATARI_100K_GAMES", "AgentEnv", "Game", "canonical_game", "make_env"]


class Game(Protocol):
    """A game one agent step at a time: what ``AtariGame`` and ``CatchGame`` provide to ``AgentEnv``."""

    action_space: Any
    action_meanings: list[str]

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        """Start a new game. Returns (frame uint8 (64, 64), info with "lives")."""

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Returns (frame, reward, game_over, life_lost, info with "lives")."""

    def close(self) -> None: ...

    # Optional: games that can be saved (Catch) also have state_dict() -> dict and load_state_dict(dict).


class AgentEnv:
    """What the agent sees of a ``Game``: a frame stack, episodic lives and a time limit (SPEC 1).

    episodic_lives: a lost life (with lives left) ends the episode (``terminated=True``), and the next
        ``reset()`` continues the game with one no-op step; every other ``reset()`` starts a new game.
    time_limit: ``truncated=True`` after this many steps since the last ``reset()`` (as the published
        code's outermost TimeLimit counts).
    continue_after_truncation: with episodic lives, the ``reset()`` after a truncation also goes on
        with the game, as the published training env does (its episodic-lives wrapper sits inside the
        time limit, so its reset only takes a no-op step unless the game is over). Otherwise the next
        ``reset()`` starts a new game.
    """

    def __init__(self, game: Game, *, seed: int | None, frame_stack: int, episodic_lives: bool,
                 time_limit: int, continue_after_truncation: bool = False):
        self.game = game
        self.action_space = game.action_space
        self.action_meanings = game.action_meanings
        self.num_actions = int(self.action_space.n)
        self._episodic_lives = episodic_lives
        self._time_limit = time_limit
        self._continue_after_truncation = episodic_lives and continue_after_truncation
        self._first_seed = seed              # seeds the first reset() that is given no seed
        self._stack: np.ndarray | None = None  # (frame_stack, H, W), oldest first
        self._frame_stack = frame_stack
        self._steps = 0                      # steps since the last reset(), for the time limit
        self._continue_game = False          # reset() goes on with the game (a lost life, or a truncation)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode. obs: uint8 (frame_stack, 64, 64), copies of one frame.

        A seed (or make_env's seed, at the first reset) always starts a new game.
        """
        seed = self._first_seed if seed is None else seed
        self._first_seed = None
        if self._continue_game and seed is None:
            # Episodic lives: the game goes on after a lost life (or a truncation); a no-op step gives
            # the first frame.
            frame, _, game_over, _, info = self.game.step(NOOP)
            if game_over:
                frame, info = self.game.reset(None)
        else:
            frame, info = self.game.reset(seed)
        self._continue_game = False
        self._steps = 0
        # Fill the stack with the reset frame, as gymnasium's frame stacking does on every reset.
        self._stack = np.repeat(frame[None], self._frame_stack, axis=0)
        return self._stack.copy(), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One agent step: (obs uint8 (frame_stack, 64, 64), raw reward, terminated, truncated, info)."""
        frame, reward, game_over, life_lost, info = self.game.step(int(action))
        self._steps += 1
        truncated = self._steps >= self._time_limit
        terminated = game_over or (self._episodic_lives and life_lost)
        if truncated:
            self._continue_game = self._continue_after_truncation and not game_over
        else:
            self._continue_game = terminated and not game_over
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = frame
        return self._stack.copy(), reward, terminated, truncated, info

    def state_dict(self) -> dict | None:
        """The env's whole state (the game's, the frame stack, the time-limit count), or None when the
        game cannot be saved (Atari: the emulator; README, Faithfulness)."""
        if not hasattr(self.game, "state_dict"):
            return None
        return {"game": self.game.state_dict(), "stack": None if self._stack is None else self._stack.copy(),
                "steps": self._steps, "continue_game": self._continue_game, "first_seed": self._first_seed}

    def load_state_dict(self, state: dict) -> None:
        self.game.load_state_dict(state["game"])
        self._stack = None if state["stack"] is None else state["stack"].copy()
        self._steps, self._continue_game = state["steps"], state["continue_game"]
        self._first_seed = state["first_seed"]

    def close(self) -> None:
        self.game.close()


def _normalise(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def canonical_game(name: str) -> str:
    """"catch", or the canonical Atari name ("ms_pacman" -> "MsPacman"); ValueError for an unknown name.

    The 26 Atari 100k games are always known; any other game ale-py knows is accepted when it is
    installed.
    """
    known = {"catch": "catch", **{_normalise(game): game for game in ATARI_100K_GAMES}}
    key = _normalise(name)
    if key in known:
        return known[key]
    try:
        known.update({_normalise(game): game for game in ale_game_names()})
        other_games_hint = ""
    except ImportError:
        other_games_hint = f" (other ALE games: {INSTALL_HINT})"
    if key in known:
        return known[key]
    close = [known[match] for match in difflib.get_close_matches(key, known, n=3, cutoff=0.6)]
    suggestion = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown game {name!r}; {suggestion}valid games: catch, "
                     f"{', '.join(ATARI_100K_GAMES)}{other_games_hint}")


def make_env(game: str, *, seed: int, train: bool, config: Config) -> AgentEnv:
    """An environment of ``game`` ("catch" or an Atari name, see ``canonical_game``).

    seed: seeds the first ``reset()`` and ``action_space.sample()``.
    train: the training env has no-op starts (``config.noop_max``) and, with
        ``config.episodic_lives``, ends an episode at every lost life; the evaluation env has neither
        and ends an episode at game over only (SPEC 1).
    config: uses frame_size, frame_skip, frame_stack, noop_max, time_limit, episodic_lives and
        continue_after_truncation. Catch has no frame skip or no-ops: its random ball start
        already varies the episodes.
    """
    name = canonical_game(game)
    if name == "catch":
        if config.frame_size != 64:
            raise ValueError(f"catch draws 64 x 64 frames; got frame_size={config.frame_size}")
        core: Game = CatchGame(seed)
    else:
        core = AtariGame(name, seed=seed, noop_max=config.noop_max if train else 0,
                         frame_skip=config.frame_skip, frame_size=config.frame_size)
    return AgentEnv(core, seed=seed, frame_stack=config.frame_stack,
                    episodic_lives=train and config.episodic_lives, time_limit=config.time_limit,
                    continue_after_truncation=config.continue_after_truncation)
