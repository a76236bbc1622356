"""The agent's updates (SPEC 5) and imagination with the discount-threshold reset (SPEC 5.3)."""
import torch

from twm_fast.agent.agent import Agent
from twm_fast.imagination.rollout import ImaginationStart, imagine
from twm_fast.testing import random_batch, random_z, tiny_config


def test_world_model_update_shapes_and_detached_dynamics():
    config = tiny_config()
    agent = Agent(config, 3)
    batch = random_batch(config)
    obs_before = [p.clone() for p in agent.obs_model.parameters()]
    dyn_before = [p.clone() for p in agent.dynamics.parameters()]
    z, metrics = agent.update_world_model(batch)
    assert z.shape == (config.wm_batch_size, config.wm_sequence_length + 1, config.z_categoricals * config.z_categories)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(obs_before, agent.obs_model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(dyn_before, agent.dynamics.parameters()))


def test_published_loss_leaves_the_latent_head_untouched():
    """dyn_latent_loss=False as released: after world-model updates the latent head is still at its
    initial weights (no gradient, so Adam's weight decay does not move it either); the paper's loss trains it."""
    for latent_loss in (False, True):
        config = tiny_config(dyn_latent_loss=latent_loss)
        agent = Agent(config, 3)
        before = [p.clone() for p in agent.dynamics.z_head.parameters()]
        reward_before = [p.clone() for p in agent.dynamics.reward_head.parameters()]
        for _ in range(2):
            agent.update_world_model(random_batch(config))
        moved = [not torch.equal(a, b) for a, b in zip(before, agent.dynamics.z_head.parameters())]
        assert all(moved) if latent_loss else not any(moved)
        assert any(not torch.equal(a, b) for a, b in zip(reward_before, agent.dynamics.reward_head.parameters()))


def test_dynamics_loss_does_not_reach_obs_model():
    config = tiny_config()
    agent = Agent(config, 3)
    batch = random_batch(config)
    B, L = config.wm_batch_size, config.wm_sequence_length
    logits = agent.obs_model.encode(batch["obs"][:, 1:-1].flatten(0, 1))
    z = agent.obs_model.sample(logits, "straight_through")[0].view(B, L, -1)
    z_all = torch.cat([z[:, :1], z], 1).detach()
    target = logits.view(B, L, *logits.shape[1:]).detach()
    loss, _, _ = agent._dynamics_loss(z_all, batch["actions"], batch["rewards"], batch["terminated"],
                                      batch["truncated"], target)
    agent.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in agent.obs_model.parameters())
    assert any(p.grad is not None for p in agent.dynamics.parameters())


def test_train_step_runs_and_counts_imagined_resets():
    config = tiny_config()
    agent = Agent(config, 3)
    metrics = agent.train_step(random_batch(config), torch.randint(0, 256, (8, 4, 64, 64), dtype=torch.uint8))
    assert "ac/critic_loss" in metrics and "dyn/loss" in metrics and "obs/loss" in metrics


def test_imagination_discount_threshold_reset():
    """A rollout restarts exactly when its cumulative discount falls below the threshold; the
    restarted z comes from the pool, the weights restart at 1 and the history is cut."""
    config = tiny_config(imagine_horizon=6)
    agent = Agent(config, 3)
    # Force the discount head to predict g = 0.5 everywhere: cumulative 0.5, 0.25, 0.125, 0.0625 -> reset.
    last = agent.dynamics.discount_head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    M = 6
    start = ImaginationStart(random_z(M, 2, config), torch.randint(0, 3, (M,)), torch.zeros(M),
                             torch.zeros(M, dtype=torch.bool))
    pool = random_z(1, 1, config)[0]  # a single restart latent: every restart must equal it
    rollout = imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, pool, 6, 0.1)
    torch.testing.assert_close(rollout.discounts, torch.full((M, 6), 0.5))
    expected_resets = torch.tensor([False, False, False, True, False, False])
    assert torch.equal(rollout.resets, expected_resets.expand(M, 6))
    torch.testing.assert_close(rollout.weights[0], torch.tensor([1, 0.5, 0.25, 0.125, 1, 0.5]))
    assert torch.equal(rollout.z[:, 4], pool.expand(M, -1))
    assert rollout.z.shape == (M, 7, config.z_categoricals * config.z_categories)


def test_imagination_is_deterministic_given_the_seed():
    config = tiny_config()
    agent = Agent(config, 3)
    M = 4
    start = ImaginationStart(random_z(M, 2, config), torch.randint(0, 3, (M,)), torch.zeros(M),
                             torch.zeros(M, dtype=torch.bool))
    pool = random_z(3, 1, config)[:, 0]
    torch.manual_seed(1)
    a = imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, pool, 5, 0.1)
    torch.manual_seed(1)
    b = imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, pool, 5, 0.1)
    assert torch.equal(a.z, b.z) and torch.equal(a.actions, b.actions)


def _start(config, M):
    return ImaginationStart(random_z(M, 2, config), torch.randint(0, 3, (M,)), torch.randn(M),
                            torch.rand(M) < 0.3)


def test_bfloat16_imagination_runs_copies_refreshed_from_the_trained_weights():
    config = tiny_config(imagine_dtype="bfloat16")
    agent = Agent(config, 3)
    dynamics, actor_critic = agent.imagination_models()
    assert dynamics is not agent.dynamics and dynamics.u_bias.dtype == torch.bfloat16
    assert not any(name.startswith("_imagination") for name in agent.state_dict())  # not checkpointed
    for copy, trained in ((dynamics, agent.dynamics), (actor_critic, agent.actor_critic)):
        for a, b in zip(copy.parameters(), trained.parameters()):
            assert torch.equal(a, b.to(torch.bfloat16))
    agent.update_world_model(random_batch(config))                             # the trained weights move ...
    again, _ = agent.imagination_models()
    assert again is dynamics                                                    # ... the same copy, in place
    for a, b in zip(again.parameters(), agent.dynamics.parameters()):
        assert torch.equal(a, b.to(torch.bfloat16))
    rollout = agent.imagine(_start(config, 8), random_z(5, 1, config)[:, 0])
    for name in ("z", "rewards", "discounts", "weights"):
        assert getattr(rollout, name).dtype == torch.float32, name
    assert ((rollout.discounts >= 0) & (rollout.discounts <= 1)).all()
    assert torch.equal(rollout.z.sum(-1), torch.full(rollout.z.shape[:2], float(config.z_categoricals)))


def test_bfloat16_imagination_predicts_as_float32_within_bfloat16_error():
    """The first imagined step from the same start and noise: bf16 predictions within bf16 rounding
    of the fp32 ones (later steps may sample differently, as two seeds would)."""
    config = tiny_config()
    agent = Agent(config, 3)
    start = _start(config, 16)
    pool = random_z(5, 1, config)[:, 0]
    torch.manual_seed(3)
    fp32 = imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, pool, 1, 0.1)
    agent.config.imagine_dtype = "bfloat16"
    dynamics, actor_critic = agent.imagination_models()
    torch.manual_seed(3)
    bf16 = imagine(agent.obs_model, dynamics, actor_critic, start, pool, 1, 0.1)
    assert (bf16.actions == fp32.actions).float().mean() >= 0.8  # same noise: ties aside, the same actions
    same = bf16.actions[:, 0] == fp32.actions[:, 0]
    torch.testing.assert_close(bf16.rewards[same], fp32.rewards[same], atol=0.05, rtol=0.05)
    torch.testing.assert_close(bf16.discounts[same], fp32.discounts[same], atol=0.02, rtol=0.02)


def test_config_rejects_an_unknown_imagination_dtype():
    import pytest

    with pytest.raises(ValueError, match="imagine_dtype='float16': must be one of float32, bfloat16"):
        tiny_config(imagine_dtype="float16")


def test_bfloat16_world_model_update_trains_fp32_weights_close_to_the_fp32_update():
    """world_model_dtype=bfloat16: autocast forward passes, fp32 weights and optimisers, channels-last
    convolutions; the losses of one update within bf16 error of the fp32 update from the same state."""
    batch = random_batch(tiny_config())
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(world_model_dtype=dtype)
        torch.manual_seed(0)
        agent = Agent(config, 3)
        before = [p.clone() for p in agent.parameters()]
        torch.manual_seed(1)
        _, metrics = agent.update_world_model(batch)
        assert all(p.dtype == torch.float32 for p in agent.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, agent.dynamics.parameters()))
        results[dtype] = (agent, metrics)
    agent, metrics = results["bfloat16"]
    conv = agent.obs_model.encoder[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert results["float32"][0].obs_model.encoder[0].weight.is_contiguous()
    with agent.world_model_autocast():
        assert agent.obs_model.encode(batch["obs"][:, 0]).dtype == torch.bfloat16
    assert not torch.equal(metrics["obs/loss"], results["float32"][1]["obs/loss"])  # bf16 did run
    for key in ("obs/loss", "dyn/loss", "dyn/z_ce", "dyn/reward_nll"):
        fp32, bf16 = results["float32"][1][key], metrics[key]
        assert torch.isfinite(bf16)
        torch.testing.assert_close(bf16, fp32, rtol=0.03, atol=0.03, msg=key)


def test_bfloat16_pretraining_updates_run():
    config = tiny_config(world_model_dtype="bfloat16")
    agent = Agent(config, 3)
    metrics = agent.pretrain_obs_model(torch.randint(0, 256, (6, 4, 64, 64), dtype=torch.uint8))
    assert torch.isfinite(metrics["obs/loss"])
