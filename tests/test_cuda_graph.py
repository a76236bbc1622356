"""The CUDA-graph helper: structure handling and optimiser preparation on any machine; capture and
replay of a whole world-model update on a GPU."""
import copy
import dataclasses

import pytest
import torch

from twm_fast.agent.agent import Agent
from twm_fast.checkpoint import portable_optimizer_state
from twm_fast.cuda_graph import CapturedCall, make_capturable, map_tensors, tensors_of
from twm_fast.imagination.rollout import ImaginationStart
from twm_fast.testing import random_batch, random_z, tiny_config


def test_map_tensors_keeps_the_structure():
    start = ImaginationStart(torch.zeros(2, 2, 3), torch.ones(2), torch.full((2,), 2.0), torch.zeros(2, dtype=bool))
    args = (start, {"a": torch.ones(3), "b": [torch.ones(1), 0.5, None]}, "mode")
    doubled = map_tensors(args, lambda t: t * 2)
    assert isinstance(doubled[0], ImaginationStart) and torch.equal(doubled[0].rewards, torch.full((2,), 4.0))
    assert doubled[1]["b"][1:] == [0.5, None] and doubled[2] == "mode"
    assert [t.shape for t in tensors_of(args)] == [(2, 2, 3), (2,), (2,), (2,), (3,), (1,)]


def test_layout_key_separates_shapes_strides_and_other_arguments():
    x = torch.zeros(4, 6)
    key = CapturedCall._key
    assert key((x, 1)) == key((torch.ones(4, 6), 1))
    assert key((x, 1)) != key((x, 2))
    assert key((x, 1)) != key((x[:, :3], 1)) != key((x.t(), 1))
    assert key((x,)) != key((x.double(),))


def test_captured_call_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        CapturedCall(lambda x: x + 1)(torch.ones(3))


def test_make_capturable_moves_step_counters_and_checkpoints_stay_portable():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    make_capturable(optimizer)
    assert all(group["capturable"] for group in optimizer.param_groups)
    for state in optimizer.state.values():
        assert state["step"].dtype == torch.float32 and state["step"].device == model.weight.device
    portable = portable_optimizer_state(optimizer)
    assert not any(group["capturable"] for group in portable["param_groups"])
    assert optimizer.param_groups[0]["capturable"]                  # the live optimiser is untouched
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(portable)
    assert not fresh.param_groups[0]["capturable"]


@pytest.mark.gpu
def test_graphed_world_model_update_equals_the_eager_update():
    """Two identical agents, the same batches and seeds: eager updates vs two eager calls, the capture
    and replays (dropout included: the graph-safe generator draws as the eager path does)."""
    config = tiny_config(wm_batch_size=16, wm_sequence_length=16, memory_length=16)
    torch.manual_seed(0)
    eager = Agent(config, 3).cuda()
    graphed = copy.deepcopy(eager)
    graphed.config = dataclasses.replace(config, world_model_cuda_graph=True)
    batches = [{k: v.cuda() for k, v in random_batch(config).items()} for _ in range(5)]
    for step, batch in enumerate(batches):
        torch.manual_seed(step)
        z_eager, metrics_eager = eager.update_world_model(batch)
        torch.manual_seed(step)
        z_graph, metrics_graph = graphed.update_world_model(batch)
        torch.testing.assert_close(metrics_graph["dyn/loss"], metrics_eager["dyn/loss"])
        torch.testing.assert_close(z_graph, z_eager)
    assert len(graphed._graphed_world_model_update._graphs) == 1
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


class _FakeGraph:
    """A CPU stand-in for torch.cuda.CUDAGraph with the same contract: the captured call's outputs
    are static tensors that each replay overwrites in place, from the static inputs. Its "capture"
    runs the call for real, so the replay that follows a capture does nothing (a real capture
    records without running, and that replay runs it)."""

    def __init__(self):
        self.fn = self.args = self.out = None
        self.just_captured = True

    def replay(self):
        if self.just_captured:
            self.just_captured = False
            return
        fresh = self.fn(*self.args)
        for static, new in zip(tensors_of(self.out), tensors_of(fresh)):
            static.copy_(new)


class _FakeStream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    """CapturedCall's plumbing on a CPU: capture records the function, replay re-runs it in place."""
    import contextlib

    from twm_fast import cuda_graph

    captured_calls = []

    @contextlib.contextmanager
    def graph(g):
        yield

    original_capture = cuda_graph.CapturedCall._capture

    def capture(self, args):
        result = original_capture(self, args)
        result.graph.fn, result.graph.args, result.graph.out = self.fn, result.args, result.out
        captured_calls.append(result)
        return result

    monkeypatch.setattr(cuda_graph, "on_cuda", lambda tensors: bool(tensors))
    monkeypatch.setattr(cuda_graph.CapturedCall, "_capture", capture)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", _FakeStream)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    return captured_calls


def test_captured_call_plumbing_eager_then_capture_then_replays(fake_cuda_graphs):
    calls = []

    def fn(x, pair):
        calls.append(x.shape)
        return {"double": 2 * x, "sum": (x + pair[0]).sum(), "kept": pair[1]}

    captured = CapturedCall(fn)
    for step in range(6):
        x, y = torch.randn(3, 4), torch.randn(4)
        out = captured(x, (y, "tag"))
        torch.testing.assert_close(out["double"], 2 * x)             # this call's inputs, also on replay
        torch.testing.assert_close(out["sum"], (x + y).sum())
        assert out["kept"] == "tag"
        out["double"].zero_()                                          # a clone: the graph's output is safe
    assert len(fake_cuda_graphs) == 1                                  # two eager calls, one capture
    assert len(calls) == 2 + 1 + 3                                     # eager, capture, later replays
    captured(torch.randn(5, 4), (torch.randn(4), "tag"))               # a new shape: eager again
    assert len(fake_cuda_graphs) == 1


def test_graphed_world_model_update_plumbing_on_a_cpu(fake_cuda_graphs, monkeypatch):
    """The agent's graphed update with its batch dict: the static batch follows each call's data."""
    from twm_fast.agent import agent as agent_module

    monkeypatch.setattr(agent_module, "make_capturable", lambda optimizer: None)  # capturable Adam needs CUDA
    config = dataclasses.replace(tiny_config(), world_model_cuda_graph=True)
    torch.manual_seed(0)
    graphed = Agent(config, 3)
    eager = copy.deepcopy(graphed)
    eager.config = tiny_config()
    for step in range(5):
        batch = random_batch(config)
        torch.manual_seed(step)
        z_graph, metrics_graph = graphed.update_world_model(batch)
        torch.manual_seed(step)
        z_eager, metrics_eager = eager.update_world_model(batch)
        torch.testing.assert_close(metrics_graph["dyn/loss"], metrics_eager["dyn/loss"])
        torch.testing.assert_close(z_graph, z_eager)
    assert len(fake_cuda_graphs) == 1
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b)


def test_graphed_imagination_plumbing_on_a_cpu(fake_cuda_graphs):
    """The agent's graphed rollouts (ImaginationStart in, Rollout out) equal eager ones, call after call."""
    from twm_fast.imagination.rollout import imagine

    config = tiny_config()
    agent = Agent(config, 3)
    for step in range(5):
        start = ImaginationStart(random_z(8, 2, config), torch.randint(0, 3, (8,)), torch.randn(8),
                                 torch.rand(8) < 0.3)
        pool = random_z(5, 1, config)[:, 0]
        torch.manual_seed(step)
        graphed = agent.imagine(start, pool)
        torch.manual_seed(step)
        eager = imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, pool, config.imagine_horizon,
                        config.imagine_discount_threshold)
        for field in dataclasses.fields(eager):
            torch.testing.assert_close(getattr(graphed, field.name), getattr(eager, field.name), msg=field.name)
    assert len(fake_cuda_graphs) == 1
