"""The models give the same results on the Triton kernels (here through the interpreter) as on the
reference twins: the fast path checked at the level the trainer uses it, not only op by op."""
import pytest
import torch

from twm_fast.agent.agent import Agent
from twm_fast.models.dynamics import DynamicsModel
from twm_fast.testing import random_batch, random_z, tiny_config

pytest.importorskip("triton")


def window_inputs(config, batch=3, steps=6):
    z = random_z(batch, steps, config)
    return z, torch.randint(0, 3, (batch, steps)), torch.randn(batch, steps - 1), torch.rand(batch, steps - 1) < 0.2


def run_dynamics(monkeypatch, backend, model, inputs):
    monkeypatch.setenv("TWM_FAST_BACKEND", backend)
    model.zero_grad()
    h = model(*inputs)
    preds = model.predict(h)
    loss = h.square().mean() + preds["reward"].square().mean() + preds["z_logits"].logsumexp(-1).mean()
    loss.backward()
    return h.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_dynamics_forward_and_gradients_match(monkeypatch):
    config = tiny_config(dyn_dropout=0.0)
    model = DynamicsModel(config, num_actions=3).train()
    inputs = window_inputs(config)
    h_ref, grads_ref = run_dynamics(monkeypatch, "torch", model, inputs)
    h_fast, grads_fast = run_dynamics(monkeypatch, "triton", model, inputs)
    torch.testing.assert_close(h_fast, h_ref, atol=1e-5, rtol=1e-5)
    assert grads_fast.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads_fast[name], grads_ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cached_steps_on_kernels_equal_the_reference_window(monkeypatch):
    config = tiny_config()
    model = DynamicsModel(config, num_actions=3).eval()
    z, actions, rewards, dones = window_inputs(config, steps=8)
    monkeypatch.setenv("TWM_FAST_BACKEND", "torch")
    with torch.no_grad():
        h_full = model(z, actions, rewards, dones)
    monkeypatch.setenv("TWM_FAST_BACKEND", "triton")
    with torch.no_grad():
        cache = model.new_cache(z.shape[0])
        steps = [model.step_first(cache, z[:, 0], actions[:, 0])]
        for t in range(1, z.shape[1]):
            steps.append(model.step(cache, rewards[:, t - 1], dones[:, t - 1], z[:, t], actions[:, t]))
    torch.testing.assert_close(torch.stack(steps, 1), h_full, atol=1e-5, rtol=1e-5)


def test_training_step_metrics_match(monkeypatch):
    """One world-model update and one imagination from the same weights and seed on both paths."""
    config = tiny_config(dyn_dropout=0.0)
    batch = random_batch(config)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("TWM_FAST_BACKEND", backend)
        torch.manual_seed(0)
        agent = Agent(config, 3)
        z, metrics = agent.update_world_model(batch)
        start = agent.imagination_starts(z, batch, config.imagine_batch_size)
        rollout = agent.imagine(start, z[:, 0])
        results[backend] = (z, metrics, rollout)
    z_ref, metrics_ref, rollout_ref = results["torch"]
    z_fast, metrics_fast, rollout_fast = results["triton"]
    # The reference's straight-through one-hot (onehot + probs - stopgrad(probs)) is off by an ulp.
    torch.testing.assert_close(z_fast, z_ref, atol=1e-6, rtol=0)
    for key in ("obs/loss", "dyn/loss", "dyn/z_ce"):
        torch.testing.assert_close(metrics_fast[key], metrics_ref[key], rtol=1e-5, atol=1e-4, msg=key)
    torch.testing.assert_close(rollout_fast.rewards, rollout_ref.rewards, atol=1e-4, rtol=1e-4)
    assert torch.equal(rollout_fast.actions, rollout_ref.actions)
