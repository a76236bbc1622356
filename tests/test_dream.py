"""DreamEnv: the world model as a gymnasium env steps exactly the cached dynamics model imagination uses."""
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from twm_fast.agent.agent import Agent
from twm_fast.dream import Dream, DreamEnv, _recorded_attention
from twm_fast.envs import make_env
from twm_fast.replay import make_replay
from twm_fast.testing import tiny_catch_checkpoint, tiny_config
from twm_fast.video import frames_to_uint8


@pytest.fixture
def agent():
    # memory_length 3: 20 steps go several times around the K/V ring of 14 slots.
    return Agent(tiny_config(game="catch", time_limit=50), num_actions=3)


def catch_obs(config, seed=0, steps=3):
    env = make_env("catch", seed=seed, train=True, config=config)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        obs = env.step(2)[0]
    return obs


@pytest.mark.parametrize("latent", [False, True])
@pytest.mark.parametrize("termination", ["mode", "sample"])
def test_gymnasium_env_checker_passes(agent, latent, termination):
    env = DreamEnv(agent, latent=latent, termination=termination, attention_layer=1, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Only gymnasium.make sets a spec; that one is tested with a checkpoint below.
        warnings.filterwarnings("ignore", message=".*alternative render modes")
        check_env(env)
    assert env.render().shape == (64, 64, 3)


def test_steps_equal_the_cached_dynamics_steps_for_the_same_actions_and_noise(agent):
    env = DreamEnv(agent, latent=True, attention_layer=0)
    start = catch_obs(agent.config)
    z0, _ = env.reset(seed=1, options={"obs": start})
    om, dyn = agent.obs_model.eval(), agent.dynamics.eval()
    z = om.sample(om.encode(torch.as_tensor(start[None])), "argmax")[0]
    assert torch.equal(torch.as_tensor(z0)[None], z)
    cache = dyn.new_cache(1)
    reward = None
    generator = torch.Generator().manual_seed(7)
    for t in range(20):
        action = (t * 7) % 3
        noise = torch.rand(1, om.num_vars, om.num_classes, generator=generator)
        obs, r, _, truncated, info = env.step_with_noise(action, noise, torch.rand(1, generator=generator))
        a = torch.tensor([action])
        with torch.no_grad():
            h = dyn.step_first(cache, z, a) if t == 0 else dyn.step(cache, reward, torch.tensor([False]), z, a)
            preds = dyn.predict(h)
        z = om.sample(preds["z_logits"], "sample", noise)[0]
        reward = preds["reward"]
        assert torch.equal(torch.as_tensor(obs)[None], z), t
        assert r == float(reward[0])
        assert info["discount"] == float(torch.sigmoid(preds["discount_logit"])[0].clamp(0, 1))
        assert not truncated


def test_reset_from_a_given_frame_reproduces_its_encoding(agent):
    start = catch_obs(agent.config, seed=3)
    om = agent.obs_model.eval()
    with torch.no_grad():
        z = om.sample(om.encode(torch.as_tensor(start[None])), "argmax")[0]
        decoded = frames_to_uint8(om.decode(z))[0]
    frames, info = DreamEnv(agent).reset(options={"obs": start})
    latent, _ = DreamEnv(agent, latent=True).reset(options={"obs": start})
    assert np.array_equal(info["start_obs"], start)
    assert np.array_equal(latent, z[0].numpy()) and latent.sum() == agent.config.z_categoricals
    assert frames.dtype == np.uint8 and np.array_equal(frames, decoded)


def test_reset_starts_from_the_real_game_or_a_replay_file(agent, tmp_path):
    config = agent.config
    env = DreamEnv(agent, start="game")
    _, info = env.reset(seed=5)
    _, again = env.reset(seed=5)
    assert np.array_equal(info["start_obs"], again["start_obs"])
    ball_columns = {int(np.flatnonzero(env.reset(seed=s)[1]["start_obs"][-1, :8].any(0))[0]) for s in range(12)}
    assert len(ball_columns) > 1  # the seed reaches the game: the ball starts in different columns

    replay = make_replay("cpp", capacity=50, seed=0)
    game = make_env("catch", seed=0, train=True, config=config)
    replay.add_first(game.reset(seed=0)[0])
    for _ in range(30):
        obs, reward, terminated, truncated, _ = game.step(game.action_space.sample())
        replay.add(0, reward, terminated, truncated, obs if not (terminated or truncated) else game.reset()[0])
    replay.save(str(tmp_path / "run.replay"))
    stored = replay.read_obs(np.arange(replay.first_step, replay.total_steps + 1))
    env = DreamEnv(agent, start=tmp_path / "run.replay")
    starts = [env.reset(seed=s)[1]["start_obs"] for s in range(5)]
    assert all(any(np.array_equal(s, o) for o in stored) for s in starts)
    with pytest.raises(FileNotFoundError, match="neither 'game' nor a replay file"):
        DreamEnv(agent, start=tmp_path / "missing.replay")


def test_same_seed_same_dream_other_seed_other_dream(agent):
    def dream(seed):
        env = DreamEnv(agent, latent=True)
        env.reset(seed=seed)
        return np.stack([env.step(t % 3)[0] for t in range(8)])

    assert np.array_equal(dream(4), dream(4))
    assert not np.array_equal(dream(4), dream(5))


def set_discount(agent, logit):
    final = agent.dynamics.discount_head[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.fill_(logit)


def test_termination_mode_and_sample(agent):
    gamma = agent.config.discount
    # g = 0.4: P(terminated) = 1 - 0.4 / 0.99 = 0.596, more likely than not.
    set_discount(agent, float(torch.logit(torch.tensor(0.4))))
    noise = torch.rand(1, agent.config.z_categoricals, agent.config.z_categories)
    mode = DreamEnv(agent, termination="mode")
    mode.reset(seed=0)
    _, _, terminated, _, info = mode.step_with_noise(0, noise)
    assert terminated and info["termination_probability"] == pytest.approx(1 - 0.4 / gamma, abs=1e-6)
    sample = DreamEnv(agent, termination="sample")
    for u, expected in [(0.5, True), (0.7, False)]:
        sample.reset(seed=0)
        assert sample.step_with_noise(0, noise, torch.tensor([u]))[2] is expected
    # g = 0.6: P(terminated) = 0.394, the mode goes on.
    set_discount(agent, float(torch.logit(torch.tensor(0.6))))
    mode.reset(seed=0)
    assert not mode.step_with_noise(0, noise)[2]
    with pytest.raises(ValueError, match="termination_noise"):
        sample.reset(seed=0)
        sample.step_with_noise(0, noise)
    with pytest.raises(ValueError, match="termination"):
        DreamEnv(agent, termination="always")


def test_truncation_at_max_episode_steps(agent):
    env = DreamEnv(agent, max_episode_steps=4)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(4)] == [False, False, False, True]


def test_recorded_attention_is_the_attention_the_step_computed(agent):
    """The probabilities the dream records (reference twin) reproduce the step's attention output (the
    op the model dispatches to), and the per-step layout puts each key at its step and token kind."""
    dyn = agent.dynamics.eval()
    attn = dyn.layers[1].attn
    seen = []
    attend_step = attn.attend_step

    def spy(qkv, kv, *args):
        heads = attend_step(qkv, kv, *args)
        seen.append((kv[:, :, 1].clone(), heads))
        return heads

    attn.attend_step = spy
    try:
        dream = Dream(agent.obs_model, dyn)
        dream.start(torch.eye(20)[:1].repeat(2, 1))
        record = []
        for t in range(9):
            with _recorded_attention(attn, record):
                out = dream.step(torch.tensor([t % 3, 1]), torch.rand(2, 4, 5), attention_layer=None)
            probs, _, allowed = record[-1]
            values, heads = seen[-1]
            assert torch.allclose(torch.einsum("bhts,bshd->bthd", probs, values).flatten(2), heads, atol=1e-6)
            assert torch.all(probs[~allowed[:, None].expand_as(probs)] == 0)
        out = dream.step(torch.tensor([0, 1]), torch.rand(2, 4, 5), attention_layer=1)
    finally:
        del attn.attend_step
    memory = dyn.memory_length
    assert out.attention.shape == (2, dyn.config.dyn_num_heads, memory + 2, 3)
    assert torch.allclose(out.attention.sum((2, 3)), torch.ones(2, dyn.config.dyn_num_heads))
    visible = out.attention_visible[0]
    # Step t sees a_{t-M-1} and r_{t-M-1}, all of steps t-M .. t-1, and z_t, a_t (not r_t).
    expected = torch.ones(memory + 2, 3, dtype=torch.bool)
    expected[0, 0] = expected[-1, 2] = False
    assert torch.equal(visible, expected)


def test_gymnasium_make_from_a_checkpoint(tmp_path):
    checkpoint = tiny_catch_checkpoint(tmp_path, steps=60, updates=1)
    env = gymnasium.make("twm_fast/Dream-v0", checkpoint=str(checkpoint), device="cpu", start="replay",
                         max_episode_steps=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 64, 64) and env.action_space.n == 3
    assert env.unwrapped.action_meanings == ["NOOP", "LEFT", "RIGHT"]
    steps = [env.step(1) for _ in range(3)]
    assert steps[-1][3] and isinstance(steps[0][1], float)
    env.close()


def test_an_atari_dream_starts_from_the_real_game():
    pytest.importorskip("ale_py")
    agent = Agent(tiny_config(game="Pong", time_limit=20, noop_max=2), num_actions=6)  # short resets
    env = DreamEnv(agent, start="game", render_mode="rgb_array")
    assert env.action_meanings == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*alternative render modes")
        check_env(env)
    _, info = env.reset(seed=0)
    assert info["start_obs"].shape == (4, 64, 64) and info["start_obs"].any()  # a real Pong screen
    env.close()
