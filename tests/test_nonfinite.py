"""Guarded numerics (twm_fast.models.nets.optimizer_step, twm_fast.nonfinite): a non-finite loss,
gradient norm or imagined rollout skips the update on the device, leaving weights and Adam's state as
they were; the guard counts streaks and stops a run that keeps producing them."""
import copy

import pytest
import torch
from torch import nn

from twm_fast.models.nets import adam, optimizer_step
from twm_fast.nonfinite import NonFiniteGuard, RunFailed, nonfinite_modules


def model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = adam(model.parameters(), lr=1e-2, eps=1e-8, weight_decay=1e-6)
    x = torch.randn(8, 4)
    norm, skipped = optimizer_step(optimizer, model(x).square().mean(), clip=100.0)  # Adam has state now
    assert skipped.item() == 0.0 and torch.isfinite(norm)
    return model, optimizer, x


def snapshot(model, optimizer):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()["state"])


def assert_unchanged(before, after):
    (weights, state), (weights2, state2) = before, after
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)
    for key in state:
        for name, value in state[key].items():
            assert torch.equal(value, state2[key][name]), name  # exp_avg, exp_avg_sq and the step count


@pytest.mark.parametrize("poison", ["nan loss", "inf loss", "nan gradient", "invalid rollout"])
def test_a_non_finite_update_is_skipped_on_the_device(poison):
    model, optimizer, x = model_and_optimizer()
    before = snapshot(model, optimizer)
    loss = model(x).square().mean()
    valid = None
    if poison == "nan loss":
        loss = loss * float("nan")
    elif poison == "inf loss":
        loss = loss + float("inf")
    elif poison == "nan gradient":  # a finite loss whose backward meets a NaN
        loss = loss + (model.weight * torch.tensor(float("nan"))).sum() * 0.0
    else:  # the loss is fine, the imagined rollout it came from is not (Agent.train_step's check)
        valid = torch.tensor(False)
    norm, skipped = optimizer_step(optimizer, loss, clip=100.0, valid=valid)
    assert skipped.item() == 1.0 and skipped.dim() == 0
    assert_unchanged(before, snapshot(model, optimizer))
    # The next finite update goes through as usual.
    _, skipped = optimizer_step(optimizer, model(x).square().mean(), clip=100.0)
    assert skipped.item() == 0.0
    assert not torch.equal(before[0]["weight"], model.weight.detach())


def test_guard_counts_streaks_and_stops_at_the_limit():
    guard = NonFiniteGuard(limit=3)
    assert guard.observe({"dyn/skipped": 0.0}, "train step 1") is None
    line = guard.observe({"dyn/skipped": 1.0}, "train step 2")
    assert line.startswith("non-finite dynamics model at train step 2: update skipped") and "1 skipped" in line
    assert guard.observe({"obs/skipped": 1.0}, "train step 3") is None  # the same streak: no new line
    assert guard.observe({"dyn/skipped": 0.0}, "train step 4") is None  # a good update ends it
    assert (guard.consecutive, guard.total) == (0, 2)
    state = guard.state_dict()
    guard.observe({"imagine/nonfinite": 1.0}, "train step 5")
    guard.observe({"ac/actor_skipped": 1.0}, "train step 6")
    with pytest.raises(RunFailed, match="3 updates in a row were skipped .* from train step 5 on"):
        guard.observe({"ac/critic_skipped": 1.0}, "train step 7")
    guard.load_state_dict(state)
    assert (guard.consecutive, guard.total) == (0, 2)


def test_nonfinite_modules_names_the_broken_model():
    class Agent(nn.Module):
        def __init__(self):
            super().__init__()
            self.obs_model, self.dynamics = nn.Linear(2, 2), nn.Linear(2, 2)

    agent = Agent()
    assert nonfinite_modules(agent) == []
    with torch.no_grad():
        agent.dynamics.bias[0] = float("inf")
    assert nonfinite_modules(agent) == ["dynamics"]
