"""Catch: a built-in pixel game that a small agent learns in minutes on a CPU (no ROM, no gymnasium).

Rules
-----
- The screen is 64 x 64 pixels, uint8: 0 is background, 255 is an object. It is a grid of 8 x 8 cells of
  8 x 8 pixels, and everything moves by whole cells.
- A ball (one cell, 8 x 8 px) appears in the top row at a uniformly random column and falls one cell
  (8 px) per agent step.
- A paddle (2 cells wide, 16 x 8 px) sits in the bottom row; it starts centred and keeps its place
  from ball to ball. Actions: 0 = NOOP (stay), 1 = LEFT, 2 = RIGHT; the paddle moves one cell
  (8 px) and stops at the screen's edges. The paddle moves before the ball falls.
- When the ball reaches the bottom row (7 steps after it appeared) the reward is +1 if it is over
  the paddle and -1 otherwise; that frame shows the ball in the paddle row (inside the paddle or
  beside it). On the next step a new ball appears in the top row.
- A game is 5 balls, so a return lies in [-5, 5] and a game lasts 5 x 8 - 1 = 39 agent steps. The
  number of balls left is ``info["lives"]``.
- Like Atari's episodic lives (SPEC 1), a training env ends an episode (``terminated=True``) at every
  missed ball; its next ``reset()`` continues the same game with the next ball.

The paddle can cross the whole screen (6 cells) in the 7 steps a ball takes to fall, so a
perfect player catches every ball. Reference returns, measured by ``measure_reference_scores()``
(1000 evaluation episodes, seed 0):

- uniformly random actions: -2.604 (``CATCH_RANDOM_SCORE``, the "random" reference; the standard
  error is about 0.06: 10,000 episodes with seed 1 give -2.517);
- the scripted ``track_ball_action`` policy: 5.0, the maximum (``CATCH_OPTIMAL_SCORE``, the "human"
  reference of the human-normalised score).
"""
from __future__ import annotations

import numpy as np

FRAME_SIZE = 64
# 8 px cells: a ball of 64 px is big enough for a small VAE to reconstruct early in training (a
# 4 px ball, like Pong's, is first ignored by the unit-variance Gaussian decoder), and a drop of
# 7 steps keeps rewards within the quick preset's imagination horizon.
CELL = 8                          # px per grid cell: the ball is one cell, moves are one cell
GRID = FRAME_SIZE // CELL         # 8 cells per side
PADDLE_CELLS = 2                  # the paddle is 16 px wide
BALLS_PER_GAME = 5
ACTION_MEANINGS = ["NOOP", "LEFT", "RIGHT"]

CATCH_RANDOM_SCORE = -2.604       # mean return of uniformly random actions (see module docstring)
CATCH_OPTIMAL_SCORE = 5.0         # mean return of track_ball_action: every ball caught


class DiscreteActions:
    """The action space of Catch: ``n`` actions, with its own seeded generator for ``sample()``."""

    def __init__(self, n: int, seed: int | None = None):
        self.n = n
        self._rng = np.random.default_rng(seed)

    def sample(self) -> int:
        return int(self._rng.integers(self.n))

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]


class CatchGame:
    """The game itself, one frame at a time; ``twm_fast.envs.AgentEnv`` adds frame stacking,
    episodic lives and the time limit.

    ``reset(seed) -> (frame, info)`` and ``step(action) -> (frame, reward, game_over, life_lost, info)``,
    where ``frame`` is uint8 (64, 64) and ``info`` holds ``"lives"`` (balls left).
    """

    action_meanings = ACTION_MEANINGS

    def __init__(self, seed: int | None = None):
        self.action_space = DiscreteActions(len(ACTION_MEANINGS), seed)
        self._rng = np.random.default_rng(seed)
        self._paddle = 0          # left cell of the paddle, in [0, GRID - PADDLE_CELLS]
        self._ball_row = 0
        self._ball_col = 0
        self._balls_left = 0
        self._ball_done = False   # the ball reached the bottom row last step: spawn the next one now

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._paddle = (GRID - PADDLE_CELLS) // 2
        self._balls_left = BALLS_PER_GAME
        self._spawn_ball()
        return self._draw(), {"lives": self._balls_left}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        move = (0, -1, 1)[action]
        self._paddle = min(max(self._paddle + move, 0), GRID - PADDLE_CELLS)
        reward = 0.0
        life_lost = False
        if self._ball_done:
            self._spawn_ball()
        else:
            self._ball_row += 1
            if self._ball_row == GRID - 1:
                caught = self._paddle <= self._ball_col < self._paddle + PADDLE_CELLS
                reward = 1.0 if caught else -1.0
                self._balls_left -= 1
                self._ball_done = True
                # As in Atari's episodic lives, losing the last life is game over, not a lost life.
                life_lost = not caught and self._balls_left > 0
        game_over = self._balls_left == 0
        return self._draw(), reward, game_over, life_lost, {"lives": self._balls_left}

    def close(self) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything the game's future depends on (a checkpoint holds it, so that Catch resumes exactly)."""
        return {"rng": self._rng.bit_generator.state, "action_space": self.action_space.state_dict(),
                "paddle": self._paddle, "ball_row": self._ball_row, "ball_col": self._ball_col,
                "balls_left": self._balls_left, "ball_done": self._ball_done}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
        self.action_space.load_state_dict(state["action_space"])
        self._paddle, self._ball_row, self._ball_col = state["paddle"], state["ball_row"], state["ball_col"]
        self._balls_left, self._ball_done = state["balls_left"], state["ball_done"]

    def _spawn_ball(self) -> None:
        self._ball_row = 0
        self._ball_col = int(self._rng.integers(GRID))
        self._ball_done = False

    def _draw(self) -> np.ndarray:
        """The current frame, uint8 (64, 64)."""
        frame = np.zeros((FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
        row, col = self._ball_row * CELL, self._ball_col * CELL
        frame[row:row + CELL, col:col + CELL] = 255
        left = self._paddle * CELL
        frame[FRAME_SIZE - CELL:, left:left + PADDLE_CELLS * CELL] = 255
        return frame


def track_ball_action(obs: np.ndarray) -> int:
    """Scripted policy: move the paddle's centre towards the ball's column in the newest frame.

    obs: uint8 (frame_stack, 64, 64). Returns an action of ``ACTION_MEANINGS``.
    """
    frame = obs[-1]
    ball_cols = np.flatnonzero(frame[:FRAME_SIZE - CELL].any(axis=0))
    if ball_cols.size == 0:   # the ball is in the paddle row: nothing to track until the next one
        return 0
    paddle_cols = np.flatnonzero(frame[FRAME_SIZE - 1])
    ball_centre = ball_cols.mean()
    paddle_centre = paddle_cols.mean()
    # Within half a cell of the centre the ball lands over the paddle's middle two cells.
    if ball_centre < paddle_centre - CELL / 2:
        return 1
    if ball_centre > paddle_centre + CELL / 2:
        return 2
    return 0


def measure_reference_scores(episodes: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Mean evaluation return of uniformly random actions and of ``track_ball_action``.

    These are the numbers behind ``CATCH_RANDOM_SCORE`` and ``CATCH_OPTIMAL_SCORE``.
    """
    from twm_fast.config import Config
    from twm_fast.envs import make_env  # imported here: the package imports this module

    config = Config(game="catch")
    means = []
    for policy in ("random", "track_ball"):
        env = make_env("catch", seed=seed, train=False, config=config)
        returns = []
        for _ in range(episodes):
            obs, _ = env.reset()
            episode_return, done = 0.0, False
            while not done:
                action = env.action_space.sample() if policy == "random" else track_ball_action(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                episode_return += reward
                done = terminated or truncated
            returns.append(episode_return)
        means.append(float(np.mean(returns)))
    return means[0], means[1]
