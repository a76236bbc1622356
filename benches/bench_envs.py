"""Env benchmarks (SPEC 1): evaluation episodes/s and env steps/s, ale-py's vector env against the
single envs stepped one after the other, on Pong with a uniformly random policy (the agent's cost
is left out: these are the envs' rates).

    pytest benches --benchmark-only -k envs

The rates are printed (env steps/s, episodes/s) besides pytest-benchmark's table; the vector env
uses one C++ thread per core.
"""
import numpy as np
import pytest

from twm_fast.config import Config
from twm_fast.envs import make_env
from twm_fast.envs.vector import make_eval_envs
from twm_fast.evaluate import episode_quotas, play_episodes

pytest.importorskip("ale_py.vector_env")

GAME = "Pong"
NUM_ENVS = 8          # evaluation envs stepped together (config.eval_envs caps it at 16)
EPISODES = 8          # one full Pong episode per env: a random policy loses 21-0 in ~800 steps
COLLECT_STEPS = 2000  # steps of the training env per round


def random_policy(rng):
    return lambda obs: rng.integers(6, size=len(obs))


@pytest.mark.parametrize("backend", ["single", "vector"])
def test_bench_envs_evaluation_episodes(benchmark, backend):
    """Evaluation: EPISODES full Pong episodes over NUM_ENVS envs, as evaluate() plays them."""
    benchmark.group = "envs: Pong evaluation episodes"
    config = Config()
    rng = np.random.default_rng(0)
    counted = {}

    def play():
        envs = make_eval_envs(GAME, [1000 + i for i in range(NUM_ENVS)], config, backend=backend)
        steps = {"n": 0}
        inner = random_policy(rng)

        def policy(obs):
            steps["n"] += len(obs)
            return inner(obs)

        returns = play_episodes(envs, policy, episode_quotas(EPISODES, NUM_ENVS))
        envs.close()
        counted.update(steps=steps["n"], episodes=sum(map(len, returns)))

    benchmark.pedantic(play, rounds=2, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(episodes_per_s=counted["episodes"] / seconds, env_steps_per_s=counted["steps"] / seconds)
    print(f"\n{backend}: {counted['episodes'] / seconds:.2f} episodes/s, {counted['steps'] / seconds:,.0f} agent steps/s")


def test_bench_envs_collection_steps(benchmark):
    """Collection: the training env (no-ops, episodic lives) stepped one step at a time, as train.py does."""
    benchmark.group = "envs: Pong env steps"
    env = make_env(GAME, seed=0, train=True, config=Config())
    env.reset()
    rng = np.random.default_rng(0)

    def collect():
        for action in rng.integers(6, size=COLLECT_STEPS):
            _, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                env.reset()

    benchmark.pedantic(collect, rounds=3, iterations=1, warmup_rounds=0)
    rate = COLLECT_STEPS / benchmark.stats.stats.median
    benchmark.extra_info.update(env_steps_per_s=rate)
    print(f"\ncollection, single training env: {rate:,.0f} env steps/s")
    env.close()


@pytest.mark.parametrize("backend", ["single", "vector"])
def test_bench_envs_eval_steps(benchmark, backend):
    """Env steps/s of NUM_ENVS evaluation envs, each step a batch of NUM_ENVS actions."""
    benchmark.group = "envs: Pong env steps"
    envs = make_eval_envs(GAME, [2000 + i for i in range(NUM_ENVS)], Config(), backend=backend)
    envs.reset()
    rng = np.random.default_rng(0)
    rounds = COLLECT_STEPS // NUM_ENVS

    def step():
        for _ in range(rounds):
            envs.step(rng.integers(6, size=NUM_ENVS))

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=0)
    rate = rounds * NUM_ENVS / benchmark.stats.stats.median
    benchmark.extra_info.update(env_steps_per_s=rate)
    print(f"\n{backend}, {NUM_ENVS} eval envs: {rate:,.0f} env steps/s")
    envs.close()
