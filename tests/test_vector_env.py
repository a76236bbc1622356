"""Evaluation envs stepped together (twm_fast.envs.vector) and the per-env episode quota of evaluate."""
import numpy as np
import pytest

from twm_fast.config import Config
from twm_fast.envs import make_env
from twm_fast.envs.vector import AtariVectorEnvs, EvalStep, SingleEnvs, make_eval_envs
from twm_fast.evaluate import episode_quotas, play_episodes


@pytest.fixture(scope="module")
def atari():
    for module in ("gymnasium", "ale_py", "cv2"):
        pytest.importorskip(module)
    pytest.importorskip("ale_py.vector_env")


def play_both(game, seeds, actions, time_limit):
    """Drive AtariVectorEnvs and one make_env eval env per seed with the same actions per env.

    Returns per env the two histories: the observations the agent acts on, and per agent step
    (reward, terminated, truncated). Each env takes its next action only when it is ready."""
    config = Config(time_limit=time_limit)
    vector = AtariVectorEnvs(game, seeds, config, num_threads=2)
    singles = [make_env(game, seed=seed, train=False, config=config) for seed in seeds]
    n, steps = len(seeds), actions.shape[1]
    vec_obs, vec_steps = [[o] for o in vector.reset()], [[] for _ in seeds]
    single_obs, single_steps = [[env.reset()[0]] for env in singles], [[] for _ in seeds]
    taken = np.zeros(n, int)
    ready = np.ones(n, bool)
    while (taken < steps).any():
        act = actions[np.arange(n), np.minimum(taken, steps - 1)]
        step = vector.step(act)
        for i in range(n):
            if ready[i] and taken[i] < steps:
                obs, reward, terminated, truncated, _ = singles[i].step(int(act[i]))
                single_steps[i].append((reward, terminated, truncated))
                single_obs[i].append(singles[i].reset()[0] if terminated or truncated else obs)
            if step.stepped[i] and taken[i] < steps:
                taken[i] += 1
                vec_steps[i].append((step.rewards[i], step.terminated[i], step.truncated[i]))
            if step.ready[i] and len(vec_obs[i]) < len(single_obs[i]):
                vec_obs[i].append(step.obs[i])
        ready = step.ready
    vector.close()
    for env in singles:
        env.close()
    return vec_obs, vec_steps, single_obs, single_steps


@pytest.mark.parametrize("game, time_limit, steps", [
    ("Breakout", 400, 800),    # FIRE after each reset and each lost life; game overs and truncations
    ("Pong", 250, 600),        # FIRE after resets only (no lives); every episode is truncated
    ("MsPacman", 5000, 1200),  # no FIRE: the vector env's own reset; lives lost, games over
])
def test_vector_env_equals_single_env(atari, game, time_limit, steps):
    seeds = [3, 4, 11]
    actions = np.random.default_rng(0).integers(4, size=(len(seeds), steps))
    vec_obs, vec_steps, single_obs, single_steps = play_both(game, seeds, actions, time_limit)
    ends = 0
    for i in range(len(seeds)):
        assert vec_steps[i] == single_steps[i], f"env {i}: rewards, terminated or truncated differ"
        assert len(vec_obs[i]) == len(single_obs[i])
        for t, (a, b) in enumerate(zip(vec_obs[i], single_obs[i])):
            np.testing.assert_array_equal(a, b, err_msg=f"env {i}, observation {t}")
        ends += sum(term or trunc for _, term, trunc in single_steps[i])
        assert sum(r for r, _, _ in single_steps[i]) != 0 or game == "Pong"
    assert ends >= len(seeds), "the histories span episode ends"


def test_vector_env_reset_frame_stack_and_fire(atari):
    envs = make_eval_envs("Breakout", [0, 1], Config())
    assert isinstance(envs, AtariVectorEnvs) and envs.has_fire and envs.num_actions == 4
    obs = envs.reset()
    assert obs.shape == (2, 4, 64, 64) and obs.dtype == np.uint8
    assert (obs == obs[:, :1]).all(), "a reset's stack holds copies of the first frame (not black frames)"
    assert obs.max() > 0
    envs.close()


def test_make_eval_envs_backends(atari):
    config = Config()
    assert isinstance(make_eval_envs("catch", [0], config), SingleEnvs)
    assert isinstance(make_eval_envs("Pong", [0], config, backend="single"), SingleEnvs)
    with pytest.raises(ValueError, match="no vector env"):
        make_eval_envs("catch", [0], config, backend="vector")
    with pytest.raises(ValueError, match="unknown eval env backend"):
        make_eval_envs("Pong", [0], config, backend="gpu")


# ---- The per-env episode quota ------------------------------------------------------------------

class FixedLengthEnvs:
    """Env i's episodes last lengths[i] steps and return i + 1; env i is ready only every other step
    when slow[i] (as a vector env is while it presses FIRE)."""

    def __init__(self, lengths, slow=None):
        self.lengths = np.array(lengths)
        self.slow = np.zeros(len(lengths), bool) if slow is None else np.array(slow)
        self.num_envs, self.num_actions = len(lengths), 2
        self.t = np.zeros(len(lengths), int)
        self.calls = 0
        self.actions_taken = []

    def reset(self):
        return np.zeros((self.num_envs, 4, 64, 64), np.uint8)

    def step(self, actions):
        self.calls += 1
        ready_now = ~self.slow | (self.calls % 2 == 1)
        self.actions_taken.append(actions.copy())
        self.t[ready_now] += 1
        done = ready_now & (self.t == self.lengths)
        self.t[done] = 0
        rewards = np.where(done, np.arange(1, self.num_envs + 1), 0.0)
        next_ready = ~self.slow | (self.calls % 2 == 0)
        return EvalStep(self.reset(), next_ready, ready_now, rewards, done, np.zeros(self.num_envs, bool))

    def close(self):
        pass


def test_quota_counts_each_envs_first_episodes():
    # Env 0's episodes take 2 steps, env 1's take 50. 6 episodes over 2 envs: 3 each. Taking the
    # first 6 to finish would give env 0's episodes only (a mean return of 1 instead of 1.5).
    envs = FixedLengthEnvs([2, 50])
    returns = play_episodes(envs, lambda obs: np.ones(len(obs), np.int64), episode_quotas(6, 2))
    assert returns == [[1.0] * 3, [2.0] * 3]
    assert envs.calls == 150


@pytest.mark.parametrize("episodes, num_envs, expected", [
    (10, 16, [1] * 10 + [0] * 6), (100, 16, [7] * 4 + [6] * 12), (5, 2, [3, 2]), (7, 1, [7])])
def test_episode_quotas(episodes, num_envs, expected):
    assert episode_quotas(episodes, num_envs) == expected
    assert sum(episode_quotas(episodes, num_envs)) == episodes


def test_policy_acts_only_for_ready_envs_still_playing():
    seen = []

    def policy(obs):
        seen.append(len(obs))
        return np.ones(len(obs), np.int64)

    envs = FixedLengthEnvs([3, 3, 3], slow=[False, True, False])
    returns = play_episodes(envs, policy, [2, 1, 0])
    assert returns == [[1.0, 1.0], [2.0], []]
    assert max(seen) == 2, "env 2 has no quota: no actions are computed for it"
    assert min(seen) == 1, "env 1 is not ready every other step"


def test_single_envs_catch_episodes():
    envs = SingleEnvs("catch", [0, 1], Config(game="catch"))
    returns = play_episodes(envs, lambda obs: np.zeros(len(obs), np.int64), [2, 3])
    assert [len(r) for r in returns] == [2, 3]
    assert all(-5 <= r <= 5 for env_returns in returns for r in env_returns)
