"""The CUDA-graph imagination is the eager rollout replayed: same results for the same noise."""
import pytest
import torch

from twm_fast.agent.agent import Agent
from twm_fast.imagination.graphed import GraphedImagination
from twm_fast.imagination.rollout import ImaginationStart, imagine
from twm_fast.testing import random_z, tiny_config


def make_start(config, num, device):
    return ImaginationStart(random_z(num, 2, config).to(device), torch.randint(0, 3, (num,), device=device),
                            torch.randn(num, device=device), torch.rand(num, device=device) < 0.2)


def test_graphed_imagination_refuses_cpu_tensors():
    config = tiny_config()
    agent = Agent(config, 3)
    graphed = GraphedImagination(agent.obs_model, agent.dynamics, agent.actor_critic, 5, 0.1)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        graphed(make_start(config, 4, "cpu"), random_z(3, 1, config)[:, 0])


def test_agent_imagines_eagerly_on_a_cpu():
    config = tiny_config()
    agent = Agent(config, 3)
    rollout = agent.imagine(make_start(config, 4, "cpu"), random_z(3, 1, config)[:, 0])
    assert rollout.z.shape[:2] == (4, config.imagine_horizon + 1)
    assert agent._graphed_imagination is None


@pytest.mark.gpu
@pytest.mark.parametrize("num", [5, 800])
def test_graph_replay_equals_eager_rollout(num):
    config = tiny_config(imagine_batch_size=num, wm_batch_size=num, imagine_horizon=15, memory_length=16)
    agent = Agent(config, 3).cuda()
    start, pool = make_start(config, num, "cuda"), random_z(7, 1, config)[:, 0].cuda()
    graphed = GraphedImagination(agent.obs_model, agent.dynamics, agent.actor_critic, 15, 0.1)
    for _ in range(graphed.eager_calls + 1):  # eager calls, then the capture (and its replay)
        graphed(start, pool)
    assert len(graphed._graphs) == 1
    for seed in (1, 2):
        torch.manual_seed(seed)
        eager = imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, pool, 15, 0.1)
        torch.manual_seed(seed)
        replayed = graphed(start, pool)
        torch.testing.assert_close(replayed.rewards, eager.rewards)
        assert torch.equal(replayed.actions, eager.actions) and torch.equal(replayed.resets, eager.resets)
        torch.testing.assert_close(replayed.z, eager.z)
    # Weights updated in place between replays are seen by the graph.
    with torch.no_grad():
        agent.dynamics.reward_head[-1].bias.add_(1.0)
    torch.manual_seed(3)
    eager = imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, pool, 15, 0.1)
    torch.manual_seed(3)
    torch.testing.assert_close(graphed(start, pool).rewards, eager.rewards)


@pytest.mark.gpu
def test_agent_bfloat16_graph_sees_refreshed_weight_copies():
    """imagine_dtype=bfloat16 on a GPU: the agent's graph replays the bf16 copies, which follow the
    trained weights (refreshed in place before each rollout)."""
    config = tiny_config(imagine_batch_size=64, wm_batch_size=64, imagine_horizon=15, memory_length=16,
                         imagine_dtype="bfloat16")
    agent = Agent(config, 3).cuda()
    start, pool = make_start(config, 64, "cuda"), random_z(7, 1, config)[:, 0].cuda()
    for _ in range(3):  # eager calls, then the capture
        agent.imagine(start, pool)
    assert len(agent._graphed_imagination._graphs) == 1
    with torch.no_grad():
        agent.dynamics.reward_head[-1].bias.add_(1.0)
    torch.manual_seed(4)
    replayed = agent.imagine(start, pool)
    dynamics, actor_critic = agent.imagination_models()
    torch.manual_seed(4)
    eager = imagine(agent.obs_model, dynamics, actor_critic, start, pool, 15, 0.1)
    assert replayed.rewards.dtype == torch.float32
    torch.testing.assert_close(replayed.rewards, eager.rewards)
    assert torch.equal(replayed.actions, eager.actions)
