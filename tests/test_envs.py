"""Environments (SPEC 1): the frame-stack contract, episodic lives, time limit, Catch's rules, Atari."""
import subprocess
import sys

import numpy as np
import pytest

from twm_fast.config import Config
from twm_fast.envs import canonical_game, make_env
from twm_fast.envs.catch import (
    CATCH_OPTIMAL_SCORE,
    CATCH_RANDOM_SCORE,
    measure_reference_scores,
    track_ball_action,
)

CATCH_GAME_STEPS = 39   # 5 balls x 8 steps, less the step that would spawn a sixth ball


def catch_env(seed=0, train=True, **overrides):
    return make_env("catch", seed=seed, train=train, config=Config(game="catch", **overrides))


def play(env, actions, *, until=None):
    """Step ``env`` from reset through ``actions`` (an iterable of ints), checking the frame-stack
    contract at each step; stops after a step where ``until(terminated, truncated, info)`` holds.
    Returns a list of (obs, reward, terminated, truncated, info) with the reset as its first item."""
    obs, info = env.reset()
    assert_reset_stack(obs)
    history = [(obs, 0.0, False, False, info)]
    for action in actions:
        new_obs, reward, terminated, truncated, info = env.step(action)
        assert new_obs.shape == obs.shape and new_obs.dtype == np.uint8
        np.testing.assert_array_equal(new_obs[:-1], obs[1:])  # exactly one new frame shifted in
        history.append((new_obs, reward, terminated, truncated, info))
        obs = new_obs
        if until is not None and until(terminated, truncated, info):
            break
    return history


def assert_reset_stack(obs):
    assert obs.dtype == np.uint8 and obs.shape == (4, 64, 64)
    assert (obs == obs[0]).all(), "reset() must return copies of one frame"


# ---- Catch -----------------------------------------------------------------------------------------

def test_catch_api_and_shapes():
    env = catch_env()
    obs, info = env.reset()
    assert_reset_stack(obs)
    assert env.num_actions == env.action_space.n == 3
    assert env.action_meanings == ["NOOP", "LEFT", "RIGHT"]
    assert info["lives"] == 5
    assert 0 <= env.action_space.sample() < 3
    obs, reward, terminated, truncated, info = env.step(0)
    assert obs.shape == (4, 64, 64) and obs.dtype == np.uint8
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
    env.close()


def test_catch_pixels_follow_the_rules():
    env = catch_env()
    obs, _ = env.reset()
    frame = obs[-1]
    assert set(np.unique(frame)) == {0, 255}
    # Paddle: 16 x 8 px in the bottom rows, centred; ball: 8 x 8 px in the top rows.
    assert np.flatnonzero(frame[56:].all(axis=0)).tolist() == list(range(24, 40))
    assert frame[56:].sum() == 16 * 8 * 255
    ball_rows, ball_cols = np.nonzero(frame[:56])
    assert ball_rows.tolist() == [r for r in range(8) for _ in range(8)]
    obs, *_ = env.step(1)   # LEFT: paddle moves 8 px, ball falls 8 px
    assert np.flatnonzero(obs[-1, 63]).tolist() == list(range(16, 32))
    new_rows, new_cols = np.nonzero(obs[-1, :56])
    np.testing.assert_array_equal(new_rows, ball_rows + 8)
    np.testing.assert_array_equal(new_cols, ball_cols)


def test_catch_eval_episode_is_five_balls():
    env = catch_env(train=False)
    rng = np.random.default_rng(0)
    history = play(env, rng.integers(3, size=1000), until=lambda term, trunc, info: term or trunc)
    rewards = [step[1] for step in history[1:]]
    assert len(rewards) == CATCH_GAME_STEPS
    assert set(rewards) <= {-1.0, 0.0, 1.0}
    assert np.count_nonzero(rewards) == 5
    assert [step[2] for step in history[1:]] == [False] * (CATCH_GAME_STEPS - 1) + [True]
    assert history[-1][4]["lives"] == 0


def test_catch_is_deterministic_under_a_seed():
    actions = np.random.default_rng(1).integers(3, size=200)
    runs = []
    for seed in (7, 7, 8):
        env = catch_env(seed=seed, train=False)
        steps = play(env, actions)
        runs.append(np.stack([s[0] for s in steps]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    # reset(seed=...) reseeds too.
    env = catch_env(seed=0, train=False)
    assert np.array_equal(env.reset(seed=3)[0], env.reset(seed=3)[0])


def test_catch_episodic_lives_in_training_env_only():
    # NOOP misses every ball that lands outside the centred paddle.
    train_env = catch_env(seed=0, train=True)
    history = play(train_env, [0] * 1000, until=lambda term, trunc, info: term)
    _, reward, terminated, _, info = history[-1]
    assert terminated and reward == -1.0 and 0 < info["lives"] < 5, "a miss is a lost life"
    obs, reset_info = train_env.reset()
    assert_reset_stack(obs)
    assert reset_info["lives"] == info["lives"], "reset() after a lost life continues the game"
    assert obs[-1, :8].any() and not obs[-1, 8:56].any(), "the next ball, in the top row"

    eval_env = catch_env(seed=0, train=False)
    history = play(eval_env, [0] * 1000, until=lambda term, trunc, info: term)
    assert len(history) - 1 == CATCH_GAME_STEPS and history[-1][4]["lives"] == 0
    assert any(step[1] == -1.0 for step in history), "the eval episode went on after a miss"


def test_catch_training_episodes_until_game_over_cover_one_game():
    env = catch_env(seed=2, train=True)
    obs, info = env.reset()
    total_steps, balls = 0, 0
    while True:
        prev = obs
        obs, reward, terminated, truncated, info = env.step(0)
        np.testing.assert_array_equal(obs[:-1], prev[1:])
        total_steps += 1
        balls += reward != 0
        if terminated and info["lives"] == 0:
            break
        if terminated:
            obs, _ = env.reset()
            assert_reset_stack(obs)
            total_steps += 1     # the no-op step of the continuing reset
    assert balls == 5 and total_steps == CATCH_GAME_STEPS
    assert env.reset()[1]["lives"] == 5, "after game over reset() starts a new game"


@pytest.mark.parametrize("train, continue_after_truncation, continues", [
    (True, True, True),       # the default: as the published training env, the game goes on
    (True, False, False),     # continue_after_truncation=False: a truncated game is over
    (False, True, False),     # the evaluation env (no episodic lives) always starts a new game
])
def test_catch_time_limit_truncates_then_continues_or_restarts(train, continue_after_truncation, continues):
    env = catch_env(seed=0, train=train, time_limit=5, continue_after_truncation=continue_after_truncation)
    # 5 steps are shorter than a ball's fall (7): no miss before the time limit.
    history = play(env, [1] * 100, until=lambda term, trunc, info: term or trunc)
    assert len(history) - 1 == 5
    assert history[-1][3] and not history[-1][2] and not any(step[3] for step in history[:-1])
    last = history[-1][0][-1]
    assert last[63, 0] == 255, "the paddle went to the left edge"
    ball_col = np.flatnonzero(last[40:48].any(axis=0))   # the ball fell 5 cells: row 5 is pixels 40..47
    assert ball_col.size == 8
    obs, info = env.reset()
    assert_reset_stack(obs)
    assert info["lives"] == 5
    if continues:
        # The same game, one no-op step later: the paddle still at the edge, the ball one cell lower.
        assert np.flatnonzero(obs[-1, 63]).tolist() == list(range(0, 16))
        assert np.flatnonzero(obs[-1, 48:56].any(axis=0)).tolist() == ball_col.tolist()
        assert not obs[-1, :48].any()
    else:
        # A new game: the paddle centred and a new ball at the top.
        assert np.flatnonzero(obs[-1, 63]).tolist() == list(range(24, 40))
        assert obs[-1, :8].any()
    # One more step lands the continued ball (a reward now), while a new game's ball is still falling.
    _, reward, _, truncated, _ = env.step(0)
    assert (reward != 0) == continues and not truncated, "the time limit counts again from the reset"


def test_catch_reset_mid_episode_starts_a_new_game():
    env = catch_env(seed=0, train=True)
    play(env, [1] * 5)
    obs, info = env.reset()
    assert np.flatnonzero(obs[-1, 63]).tolist() == list(range(24, 40)), "the paddle is centred again"
    assert obs[-1, :8].any() and not obs[-1, 8:56].any(), "a new ball in the top row"


def test_catch_rejects_other_frame_sizes():
    with pytest.raises(ValueError, match="frame_size"):
        make_env("catch", seed=0, train=True, config=Config(game="catch", frame_size=84))


def test_catch_reference_scores():
    episodes = 400
    random_mean, optimal_mean = measure_reference_scores(episodes=episodes, seed=123)
    # The documented constant is a 1000-episode mean; one episode's return has a std of about 1.9.
    assert abs(random_mean - CATCH_RANDOM_SCORE) < 4 * 1.9 / np.sqrt(episodes)
    assert optimal_mean == CATCH_OPTIMAL_SCORE == 5.0


def test_track_ball_policy_catches_every_ball():
    env = catch_env(seed=5, train=False)
    obs, _ = env.reset()
    returns = 0.0
    for _ in range(CATCH_GAME_STEPS):
        obs, reward, terminated, _, _ = env.step(track_ball_action(obs))
        returns += reward
    assert terminated and returns == 5.0


def test_envs_and_catch_work_without_gymnasium():
    # A fresh interpreter in which gymnasium, ale_py and cv2 cannot be imported.
    code = """
import sys
for name in ("gymnasium", "ale_py", "cv2"):
    sys.modules[name] = None
from twm_fast.config import Config
from twm_fast.envs import make_env, canonical_game
env = make_env("catch", seed=0, train=True, config=Config(game="catch"))
env.reset(); env.step(0)
assert canonical_game("ms_pacman") == "MsPacman"
try:
    make_env("Pong", seed=0, train=True, config=Config())
except ImportError as error:
    assert 'pip install "gymnasium>=1.0" "ale-py>=0.9" opencv-python-headless' in str(error), error
else:
    raise AssertionError("no ImportError")
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- Game names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, canonical", [
    ("Pong", "Pong"), ("pong", "Pong"), ("MsPacman", "MsPacman"), ("ms_pacman", "MsPacman"),
    ("mspacman", "MsPacman"), ("up_n_down", "UpNDown"), ("KungFuMaster", "KungFuMaster"),
    ("catch", "catch"), ("Catch", "catch"),
])
def test_canonical_game(name, canonical):
    assert canonical_game(name) == canonical


def test_unknown_game_names_close_ones():
    with pytest.raises(ValueError, match="did you mean Pong") as error:
        canonical_game("Pongg")
    assert "MsPacman" in str(error.value), "the message lists the valid games"


# ---- Atari -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def atari():
    for module in ("gymnasium", "ale_py", "cv2"):
        pytest.importorskip(module)


def test_atari_pong_train_env(atari):
    env = make_env("pong", seed=0, train=True, config=Config())
    assert env.num_actions == env.action_space.n == 6
    assert env.action_meanings[:2] == ["NOOP", "FIRE"]
    rng = np.random.default_rng(0)
    history = play(env, rng.integers(6, size=60))
    rewards = [step[1] for step in history[1:]]
    assert all(isinstance(r, float) for r in rewards)
    assert not any(step[2] or step[3] for step in history)
    frames = np.stack([step[0][-1] for step in history])
    assert len(np.unique(frames.reshape(len(frames), -1), axis=0)) > 10, "the frames change"
    env.close()


def test_atari_is_deterministic_under_a_seed(atari):
    actions = np.random.default_rng(0).integers(6, size=40)
    runs = []
    for seed in (3, 3):
        env = make_env("Pong", seed=seed, train=True, config=Config())
        runs.append(np.stack([step[0] for step in play(env, actions)]))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_atari_breakout_life_loss_continues_the_game(atari):
    env = make_env("Breakout", seed=0, train=True, config=Config())
    history = play(env, np.random.default_rng(0).integers(4, size=2000),
                   until=lambda term, trunc, info: term)
    _, _, terminated, _, info = history[-1]
    assert terminated and info["lives"] == 4, "a lost life ends a training episode"
    obs, reset_info = env.reset()
    assert_reset_stack(obs)
    assert reset_info["lives"] == 4, "the game went on"
    assert reset_info["episode_frame_number"] == info["episode_frame_number"] + 4, "one no-op step"
    env.close()


def test_atari_breakout_fire_and_eval_env_without_episodic_lives(atari):
    # Breakout serves a ball only on FIRE. Playing NOOP alone, lives are lost only because the env
    # presses FIRE after the reset and after each lost life; the eval env does not end the episode.
    env = make_env("Breakout", seed=0, train=False, config=Config())
    assert env.action_meanings[1] == "FIRE"
    history = play(env, [0] * 400, until=lambda term, trunc, info: info["lives"] == 3)
    lives = [step[4]["lives"] for step in history]
    assert lives[0] == 5 and lives[-1] == 3
    assert not any(step[2] or step[3] for step in history)
    env.close()
