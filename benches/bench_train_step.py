"""Whole-step benchmarks of the agent at small shapes (CPU-sized; the GPU numbers come from
benches/gpu_report.py).

    pytest benches --benchmark-only -k bench_train_step

- `train_step`: one reference training step (world model, imagination, actor-critic) of the quick
  preset, from a replay batch to updated weights.
- `imagination`: the rollout with the per-layer K/V cache (what twm-fast does) against recomputing the
  transformer over the whole history at every step (what a cache-less implementation does); both
  produce the same h (tests/test_models.py::test_cached_stepping_equals_full_window).
"""
import pytest
import torch

from twm_fast.agent.agent import Agent
from twm_fast.config import make_config
from twm_fast.imagination.rollout import ImaginationStart
from twm_fast.testing import random_batch, random_z

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="module")
def quick_agent():
    torch.manual_seed(0)
    config = make_config("quick")
    return config, Agent(config, num_actions=3)


@pytest.mark.benchmark(group="train_step")
def test_reference_train_step(benchmark, quick_agent):
    config, agent = quick_agent
    batch = random_batch(config)
    restart_obs = torch.randint(0, 256, (config.imagine_batch_size, 4, 64, 64), dtype=torch.uint8)
    benchmark.extra_info.update(wm_batch=config.wm_batch_size, seq=config.wm_sequence_length,
                                imagined=config.imagine_batch_size, horizon=config.imagine_horizon)
    benchmark(agent.train_step, batch, restart_obs)


def _start(config, num):
    return ImaginationStart(random_z(num, 2, config), torch.randint(0, 3, (num,)), torch.zeros(num),
                            torch.zeros(num, dtype=torch.bool))


@pytest.mark.benchmark(group="imagination")
def test_imagination_kv_cache(benchmark, quick_agent):
    config, agent = quick_agent
    start, pool = _start(config, config.imagine_batch_size), random_z(8, 1, config)[:, 0]
    benchmark(agent.imagine, start, pool)


@torch.no_grad()
def _imagine_recomputing(agent, start, horizon):
    """The rollout without a cache: the whole history goes through the transformer at every step."""
    dyn, om, ac = agent.dynamics.eval(), agent.obs_model, agent.actor_critic
    num = start.z.shape[0]
    zs, actions, rewards = [start.z[:, 0], start.z[:, 1]], [start.actions], [start.rewards]
    dones = [start.dones]
    for _ in range(horizon):
        actions.append(ac.act(zs[-1]))
        h = dyn(torch.stack(zs, 1), torch.stack(actions, 1), torch.stack(rewards, 1), torch.stack(dones, 1))[:, -1]
        preds = dyn.predict(h)
        zs.append(om.sample(preds["z_logits"], "sample")[0])
        rewards.append(preds["reward"])
        dones.append(torch.zeros(num, dtype=torch.bool))
    return zs


@pytest.mark.benchmark(group="imagination")
def test_imagination_recompute_history(benchmark, quick_agent):
    config, agent = quick_agent
    start = _start(config, config.imagine_batch_size)
    benchmark(_imagine_recomputing, agent, start, config.imagine_horizon)
