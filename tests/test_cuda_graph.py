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
from twm_fast.testing import random_batch, tiny_config


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
