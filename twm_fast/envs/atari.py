"""Atari games through ale-py and gymnasium, preprocessed as in SPEC 1 (the authors' published code).

``AtariGame`` is the game one agent step at a time: ALE with the minimal action set, no sticky
actions and emulator frameskip 1, then gymnasium's ``AtariPreprocessing`` (frame skip 4, max-pool of
the last two frames, 64 x 64 grayscale uint8), FIRE after a reset and after every lost life for
games whose action 1 is FIRE, and 1..noop_max random no-ops after a reset.
``twm_fast.envs.AgentEnv`` adds frame stacking, episodic lives and the time limit.

gymnasium, ale-py and opencv (which ``AtariPreprocessing`` needs) are optional: they are imported only
when an Atari game is made, so ``twm_fast.envs`` and Catch work without them.
"""
from __future__ import annotations

import numpy as np

# The Atari 100k benchmark (Kaiser et al. 2020), in the spelling of the ALE/<Game>-v5 env ids.
ATARI_100K_GAMES = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)

# A command that works in any venv (twm-fast itself is not on the package index).
INSTALL_HINT = ('Atari games need gymnasium, ale-py and opencv: '
                'pip install "gymnasium>=1.0" "ale-py>=0.9" opencv-python-headless')

FIRE = 1
NOOP = 0


def import_gymnasium():
    """Import gymnasium with the ALE environments registered; ImportError with the install command."""
    try:
        import ale_py
        import cv2  # noqa: F401  (AtariPreprocessing resizes with it)
        import gymnasium
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    gymnasium.register_envs(ale_py)
    return gymnasium


def ale_game_names() -> list[str]:
    """Every game ale-py knows, in the spelling of its ``ALE/<Game>-v5`` ids."""
    gymnasium = import_gymnasium()
    return [env_id[len("ALE/"):-len("-v5")] for env_id in gymnasium.registry
            if env_id.startswith("ALE/") and env_id.endswith("-v5")]


class AtariGame:
    """One Atari game, one agent step (4 emulator frames) at a time.

    ``reset(seed) -> (frame, info)`` and ``step(action) -> (frame, reward, game_over, life_lost, info)``,
    where ``frame`` is uint8 (frame_size, frame_size), ``reward`` the raw game score gained,
    ``game_over`` ALE's terminated or truncated, ``life_lost`` True when a life was lost and lives
    remain, and ``info`` holds ``"lives"``.

    game: the canonical name (``canonical_game``), e.g. "MsPacman".
    noop_max: reset does 1..noop_max random no-ops (after the FIRE presses); 0 for none.
    """

    def __init__(self, game: str, *, seed: int | None, noop_max: int, frame_skip: int, frame_size: int):
        gymnasium = import_gymnasium()
        # Emulator frameskip 1 (AtariPreprocessing skips), no sticky actions, minimal action set.
        # max_num_frames_per_episode=None leaves ALE without its own 108k-frame limit, as the
        # published code does: AgentEnv's time limit is the only one.
        env = gymnasium.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0,
                             full_action_space=False, max_num_frames_per_episode=None,
                             disable_env_checker=True)
        self.action_meanings: list[str] = env.unwrapped.get_action_meanings()
        self.has_fire = self.action_meanings[1] == "FIRE"
        # Games with FIRE do their no-ops here, after the FIRE presses; AtariPreprocessing would do
        # them before.
        self._env = gymnasium.wrappers.AtariPreprocessing(
            env, noop_max=0 if self.has_fire else noop_max, frame_skip=frame_skip,
            screen_size=frame_size, terminal_on_life_loss=False, grayscale_obs=True)
        self._noop_max = noop_max if self.has_fire else 0
        self._ale = env.unwrapped.ale
        self._lives = 0        # lives after the last step, for the episodic-lives check
        self._fire_lives = 0   # lives at the last FIRE-after-life-loss check
        self.action_space = env.action_space
        self.action_space.seed(seed)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        frame, info = self._fire_reset(seed)
        if self._noop_max > 0:
            num_noops = self._env.unwrapped.np_random.integers(1, self._noop_max + 1)
            for _ in range(num_noops):
                frame, _, game_over, info = self._fire_step(NOOP)
                if game_over:
                    frame, info = self._fire_reset(None)
        self._lives = self._ale.lives()
        return frame, {**info, "lives": self._lives}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        frame, reward, game_over, info = self._fire_step(action)
        lives = self._ale.lives()
        # lives == 0 is game over (terminated now or, as in Qbert, a few frames later), not a lost life.
        life_lost = lives < self._lives and lives > 0
        self._lives = lives
        return frame, reward, game_over, life_lost, {**info, "lives": lives}

    def close(self) -> None:
        self._env.close()

    def _fire_reset(self, seed: int | None) -> tuple[np.ndarray, dict]:
        """Reset; games with FIRE then press FIRE and action 2 to start (again if either ends it)."""
        frame, info = self._env.reset(seed=seed)
        if self.has_fire:
            for action in (FIRE, 2):
                frame, _, terminated, truncated, _ = self._env.step(action)
                if terminated or truncated:
                    frame, info = self._env.reset()
        self._fire_lives = self._ale.lives()
        return frame, info

    def _fire_step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
        """One agent step; games with FIRE press it once more after a lost life, adding its reward."""
        frame, reward, terminated, truncated, info = self._env.step(action)
        lives = self._ale.lives()
        if self.has_fire and lives < self._fire_lives:
            frame, fire_reward, fire_terminated, fire_truncated, info = self._env.step(FIRE)
            reward += fire_reward
            terminated = terminated or fire_terminated
            truncated = truncated or fire_truncated
        self._fire_lives = lives
        return frame, float(reward), terminated or truncated, info
