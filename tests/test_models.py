"""The reference models pinned to SPEC 2-4: shapes, constants, both masks, cached stepping."""
import math

import pytest
import torch

from twm_fast.config import make_config
from twm_fast.models.actor_critic import ActorCritic
from twm_fast.models.dynamics import DynamicsModel, cache_slots, window_mask, window_sizes
from twm_fast.models.obs_model import ObservationModel
from twm_fast.testing import random_z, tiny_config


# ---- Observation model (SPEC 2) ----------------------------------------------------------------------
def test_paper_obs_model_shapes_and_layers():
    config = make_config("paper")
    om = ObservationModel(config)
    convs = [m for m in om.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [48, 96, 192, 384]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (0, 0) for c in convs)
    deconvs = [m for m in om.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [d.out_channels for d in deconvs] == [192, 96, 48, 4]
    assert [d.kernel_size[0] for d in deconvs] == [5, 5, 6, 6]
    obs = torch.randint(0, 256, (3, 4, 64, 64), dtype=torch.uint8)
    logits = om.encode(obs)
    assert logits.shape == (3, 32, 32)
    z = om.sample(logits)[0]
    assert z.shape == (3, 1024) and torch.all(z.view(3, 32, 32).sum(-1) == 1)
    assert om.decode(z).shape == (3, 4, 64, 64)


def _uniform_bound(tensor):
    """The bound b of U(-b, b) that tensor's values were drawn from, estimated from their std."""
    return float(tensor.detach().std()) * math.sqrt(3)


@pytest.mark.parametrize("decoder_init", ["pytorch", "kaiming"])
def test_decoder_initialisation(decoder_init):
    """SPEC 2: "pytorch" (the default, as published) leaves the four transposed convolutions at PyTorch's
    default init, exactly what a freshly built nn.ConvTranspose2d gets: weights and biases U(-b, b),
    b = 1 / sqrt(out_channels * k * k). "kaiming" draws the weights with the SiLU gain (sqrt(2), gain 1
    for the last layer), about 2.4x larger, with zero biases and a last bias of 0.5."""
    torch.manual_seed(0)
    om = ObservationModel(make_config("paper", obs_decoder_init=decoder_init))
    deconvs = [m for m in om.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(deconvs) == 4
    for i, deconv in enumerate(deconvs):
        fresh = torch.nn.ConvTranspose2d(deconv.in_channels, deconv.out_channels, deconv.kernel_size, stride=2)
        fan_in = deconv.out_channels * deconv.kernel_size[0] * deconv.kernel_size[1]
        default_bound = 1 / math.sqrt(fan_in)
        assert _uniform_bound(fresh.weight) == pytest.approx(default_bound, rel=0.05)  # PyTorch's default
        if decoder_init == "pytorch":
            assert deconv.weight.abs().max() <= default_bound
            assert _uniform_bound(deconv.weight) == pytest.approx(_uniform_bound(fresh.weight), rel=0.05)
            assert deconv.bias.abs().max() <= default_bound and deconv.bias.std() > 0
        else:
            gain = 1.0 if i == 3 else math.sqrt(2)
            bound = math.sqrt(3) * gain / math.sqrt(fan_in)
            assert deconv.weight.abs().max() <= bound
            assert _uniform_bound(deconv.weight) == pytest.approx(bound, rel=0.05)
            assert torch.all(deconv.bias == (0.5 if i == 3 else 0.0))
    # The last bias of 0.5 applies only with "kaiming": by default the output starts near 0, not mid-grey.
    assert (deconvs[-1].bias.abs().max() < 0.1) == (decoder_init == "pytorch")


def test_obs_losses_match_distributions():
    config = tiny_config()
    om = ObservationModel(config)
    obs = torch.randint(0, 256, (5, 4, 64, 64), dtype=torch.uint8)
    recon = torch.rand(5, 4, 64, 64)
    expected = -torch.distributions.Normal(recon, 1.0).log_prob(obs.float() / 255).flatten(1).sum(1).mean()
    torch.testing.assert_close(om.decoder_loss(recon, obs), expected)
    # Entropy hinge: zero above the threshold, 5 * (0.1 - x) below it.
    high = torch.full((5, 4), math.log(5.0))
    assert om.entropy_loss(high) == 0
    low = torch.full((5, 4), 0.05 * math.log(5.0))
    torch.testing.assert_close(om.entropy_loss(low), torch.tensor(5 * (0.1 - 0.05)))
    log_probs = torch.log_softmax(torch.randn(5, 4, 5), -1)
    probs = torch.softmax(torch.randn(5, 4, 5), -1)
    torch.testing.assert_close(om.consistency_loss(log_probs, probs), 0.01 * -(probs * log_probs).sum((1, 2)).mean())


def test_straight_through_gradient_reaches_logits():
    config = tiny_config()
    om = ObservationModel(config)
    logits = torch.randn(6, 4, 5, requires_grad=True)
    z = om.sample(logits, "straight_through")[0]
    (z * torch.randn_like(z)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ---- Dynamics model (SPEC 3) -------------------------------------------------------------------------
def test_window_sizes_match_cache():
    z_w, a_w, r_w = window_sizes(16)
    assert (z_w, a_w, r_w) == (51, 51, 50)
    assert cache_slots(16) == 53  # 50 remembered hidden states + the 3 tokens of the new step


def test_memory_window_mask_hand_built():
    # memory 1: z/a tokens see 6 tokens back, r tokens 5.
    dones = torch.zeros(1, 3, dtype=torch.bool)
    dist, allowed = window_mask(dones, memory_length=1)
    S = 3 * 4 - 1
    assert allowed.shape == (1, S, S)
    for i in range(S):
        limit = 5 if i % 3 == 2 else 6
        expected = [(0 <= i - j <= limit) for j in range(S)]
        assert allowed[0, i].tolist() == expected, i
    assert torch.equal(dist, torch.arange(S)[:, None] - torch.arange(S)[None])


@pytest.mark.parametrize("done_step", [0, 1, 2, 3])
def test_episode_boundary_mask_every_position(done_step):
    steps = 5
    dones = torch.zeros(1, steps - 1, dtype=torch.bool)
    dones[0, done_step] = True
    _, allowed = window_mask(dones, memory_length=16)
    S = 3 * steps - 1
    for i in range(S):
        for j in range(S):
            si, sj = i // 3, j // 3
            crosses = sj <= done_step < si
            assert bool(allowed[0, i, j]) == (j <= i and not crosses), (i, j)


def test_two_boundaries_in_one_window():
    dones = torch.tensor([[True, False, True]])
    _, allowed = window_mask(dones, memory_length=16)
    # The z token of step 3 sees only step 3; the r token of step 2 sees steps 1 and 2.
    assert allowed[0, 9].nonzero().flatten().tolist() == [9]
    assert allowed[0, 8].nonzero().flatten().tolist() == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("steps,memory", [(7, 16), (23, 3), (9, 1)])
def test_cached_stepping_equals_full_window(steps, memory):
    """Token by token with the K/V cache == one pass over the window (eval mode), also when the
    memory window slides and with episode ends."""
    config = tiny_config(memory_length=memory)
    dyn = DynamicsModel(config, num_actions=4).eval()
    B = 5
    z = random_z(B, steps, config)
    actions = torch.randint(0, 4, (B, steps))
    rewards = torch.randn(B, steps - 1)
    dones = torch.rand(B, steps - 1) < 0.15
    with torch.no_grad():
        h_full = dyn(z, actions, rewards, dones)
        cache = dyn.new_cache(B)
        h_step = [dyn.step_first(cache, z[:, 0], actions[:, 0])]
        for t in range(1, steps):
            h_step.append(dyn.step(cache, rewards[:, t - 1], dones[:, t - 1], z[:, t], actions[:, t]))
        h_step = torch.stack(h_step, 1)
        torch.testing.assert_close(h_step, h_full, atol=1e-5, rtol=1e-5)
        full, stepped = dyn.predict(h_full), dyn.predict(h_step)
        for key in full:
            torch.testing.assert_close(stepped[key], full[key], atol=1e-5, rtol=1e-5)


def test_history_before_a_done_does_not_matter():
    config = tiny_config()
    dyn = DynamicsModel(config, num_actions=3).eval()
    z = random_z(2, 6, config)
    actions = torch.randint(0, 3, (2, 6))
    rewards = torch.randn(2, 5)
    dones = torch.zeros(2, 5, dtype=torch.bool)
    dones[:, 2] = True
    z2, a2, r2 = z.clone(), actions.clone(), rewards.clone()
    z2[:, :3] = random_z(2, 3, config)
    a2[:, :3] = (a2[:, :3] + 1) % 3
    r2[:, :2] = torch.randn(2, 2)
    with torch.no_grad():
        h1, h2 = dyn(z, actions, rewards, dones), dyn(z2, a2, r2, dones)
    torch.testing.assert_close(h1[:, 3:], h2[:, 3:])
    assert not torch.allclose(h1[:, :3], h2[:, :3])


def test_dynamics_heads_and_constants():
    config = make_config("paper")
    dyn = DynamicsModel(config, num_actions=6)
    assert len(dyn.layers) == 10
    attn = dyn.layers[0].attn
    assert attn.qkv_proj.bias is None and attn.out_proj.bias is None and attn.pos_proj.bias is None
    assert attn.qkv_proj.out_features == 768
    assert attn.scale == pytest.approx(1 / 16)
    assert dyn.discount_head[-1].bias.item() == pytest.approx(0.99)
    assert dyn.reward_head[-1].bias.item() == 0
    assert isinstance(dyn.z_head[0], torch.nn.SiLU)
    assert [m.out_features for m in dyn.z_head if isinstance(m, torch.nn.Linear)] == [512] * 4 + [1024]
    assert [m.out_features for m in dyn.reward_head if isinstance(m, torch.nn.Linear)] == [256] * 4 + [1]
    assert dyn.layers[0].norm1.eps == 1e-5


@pytest.mark.parametrize("identical", [True, False])
def test_transformer_layers_start_identical_or_independent(identical):
    """SPEC 3: by default (as published) the layers are deep copies of one initialised layer: equal
    weights, separate parameters. dyn_identical_layers=False initialises each layer on its own."""
    dyn = DynamicsModel(tiny_config(dyn_num_layers=3, dyn_identical_layers=identical), num_actions=3)
    first = dyn.layers[0].state_dict()
    for layer in dyn.layers[1:]:
        equal = [torch.equal(first[name], value) for name, value in layer.state_dict().items()]
        if identical:
            assert all(equal)
        else:
            # LayerNorms start at ones and zeros either way; every weight matrix differs.
            assert not any(eq for (name, _), eq in zip(layer.state_dict().items(), equal) if "norm" not in name)
    parameters = [p for layer in dyn.layers for p in layer.parameters()]
    assert len({id(p) for p in parameters}) == len(parameters), "layers must not share parameters"


@pytest.mark.parametrize("latent_loss", [True, False])
def test_latent_term_present_or_absent_by_the_field(latent_loss):
    """SPEC 3: the paper's latent cross-entropy (default), or the published loss without it
    (dyn_latent_loss=False), where the latent head gets no gradient at all."""
    config = tiny_config(dyn_latent_loss=latent_loss)
    dyn = DynamicsModel(config, num_actions=3)
    B, L = 3, 4
    h = torch.randn(B, L, config.dyn_embed_dim)
    preds = dyn.predict(h)
    target_logits, weights = torch.randn(B, L, 4, 5), torch.ones(B, L)
    rewards, discounts = torch.randn(B, L), torch.tensor([0.99, 0.0]).repeat(B, 2)
    loss, metrics = dyn.loss(preds, target_logits, weights, rewards, discounts)
    without_latent = 10 * metrics["dyn/reward_nll"] + 50 * metrics["dyn/discount_nll"]
    torch.testing.assert_close(loss.detach(), without_latent + (metrics["dyn/z_ce"] if latent_loss else 0))
    assert metrics["dyn/z_ce"] > 0  # reported either way
    loss.backward()
    z_head_grads = [p.grad for p in dyn.z_head.parameters()]
    if latent_loss:
        assert all(g is not None and g.abs().sum() > 0 for g in z_head_grads)
    else:
        assert all(g is None for g in z_head_grads)
    assert all(p.grad is not None for p in dyn.reward_head.parameters())


def test_dynamics_loss_weights_and_values():
    config = tiny_config()
    dyn = DynamicsModel(config, num_actions=3)
    B, L = 3, 4
    preds = {"z_logits": torch.randn(B, L, 4, 5), "reward": torch.randn(B, L), "discount_logit": torch.randn(B, L)}
    target_logits = torch.randn(B, L, 4, 5)
    weights = torch.ones(B, L)
    weights[0, 1] = 0
    rewards, discounts = torch.randn(B, L), torch.tensor([0.99, 0.0]).repeat(B, 2)
    loss, metrics = dyn.loss(preds, target_logits, weights, rewards, discounts)
    ce = -(torch.softmax(target_logits, -1) * torch.log_softmax(preds["z_logits"], -1)).sum((-1, -2))
    expected_ce = (ce * weights).sum() / weights.sum()
    reward_nll = -torch.distributions.Normal(preds["reward"], 1.0).log_prob(rewards).mean()
    p = torch.sigmoid(preds["discount_logit"])
    discount_nll = -(discounts * p.log() + (1 - discounts) * (1 - p).log()).mean()
    torch.testing.assert_close(loss, expected_ce + 10 * reward_nll + 50 * discount_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["dyn/z_ce"], expected_ce)


# ---- Actor-critic (SPEC 4) ---------------------------------------------------------------------------
def test_actor_critic_losses():
    config = tiny_config()
    ac = ActorCritic(config, num_actions=3)
    N, H = 4, 5
    z = random_z(N, H + 1, config)
    actions = torch.randint(0, 3, (N, H))
    rewards, discounts = torch.randn(N, H), torch.rand(N, H)
    resets = torch.zeros(N, H, dtype=torch.bool)
    resets[1, 2] = True
    weights = torch.rand(N, H)
    values, advantages, returns = ac.targets(z, rewards, discounts, resets)
    # No bootstrapping across the reset: the advantage of step 2 of row 1 is r - V.
    torch.testing.assert_close(advantages[1, 2], rewards[1, 2] - values[1, 2])
    torch.testing.assert_close(returns, advantages + values[:, :-1])
    before = [p.clone() for p in ac.parameters()]
    metrics = ac.update(z, actions, rewards, discounts, resets, weights)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, ac.parameters()))


def test_orthogonal_init_and_zero_bias():
    config = make_config("paper")
    ac = ActorCritic(config, num_actions=6)
    first = ac.actor[0]
    w = first.weight  # (512, 1024): rows orthonormal up to the gain sqrt(2)
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(512), atol=1e-4, rtol=1e-4)
    assert torch.all(first.bias == 0)


@pytest.mark.parametrize("input_activation, output_activation, hidden", [
    (True, False, (16, 16)),    # a dynamics head: SiLU on the transformer output
    (False, True, ()),          # a token embedding: Linear then SiLU
    (False, False, (16,)),      # the actor and the critic
])
def test_mlp_inference_path_equals_its_modules(input_activation, output_activation, hidden):
    """Without autograd an MLP runs each Linear with its SiLUs as one fused op: the same function."""
    from twm_fast.models.nets import MLP

    mlp = MLP(12, hidden, 7, input_activation=input_activation, output_activation=output_activation, dropout=0.1)
    mlp.eval()
    x = torch.randn(5, 12)
    modules = torch.nn.Sequential.forward(mlp, x)
    with torch.no_grad():
        fused = mlp(x)
    torch.testing.assert_close(fused, modules, atol=1e-6, rtol=1e-6)
    assert mlp(x).requires_grad  # with autograd: the modules, differentiable


def test_transformer_layer_inference_path_equals_its_modules():
    from twm_fast.models.dynamics import TransformerXLLayer

    layer = TransformerXLLayer(tiny_config()).eval()
    with torch.no_grad():  # LayerNorm parameters away from the identity, so a missing one shows
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x, heads = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    modules = layer.residual(x, heads)
    with torch.no_grad():
        fused = layer.residual(x, heads)
    torch.testing.assert_close(fused, modules, atol=1e-6, rtol=1e-6)
    expected = layer.norm1(x + layer.attn.out_proj(heads))
    expected = layer.norm2(expected + layer.linear2(torch.nn.functional.silu(layer.linear1(expected))))
    torch.testing.assert_close(modules, expected, atol=1e-6, rtol=1e-6)


def test_step_layout_matches_writing_the_ring_token_by_token():
    """The step layout is computed in closed form; check it against a simulated ring of slots."""
    config = tiny_config(memory_length=2)
    dyn = DynamicsModel(config, num_actions=3)
    slots = cache_slots(2)
    slot_token = torch.full((slots,), -1)
    first = 0
    for step in range(40):
        windows = dyn.first_step_windows if step == 0 else dyn.step_windows
        n = windows.shape[0]
        token_index = torch.arange(first, first + n)
        slot_token[token_index % slots] = token_index
        layout_slots, key_token, dist, in_window = dyn._step_layout(first, windows)
        assert torch.equal(layout_slots, token_index % slots)
        assert torch.equal(key_token, slot_token)
        assert torch.equal(dist, token_index[:, None] - slot_token[None, :])
        expected = (slot_token[None] >= 0) & (dist >= 0) & (dist <= windows[:, None])
        assert torch.equal(in_window, expected)
        first += n
    assert 0 < len(dyn._layouts) < 40  # kept for the first rings only
