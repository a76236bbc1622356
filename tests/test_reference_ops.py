"""The reference twins against first principles: a per-(i, j) loop, closed forms, a hand-worked example."""
import math

import pytest
import torch
from scipy import stats

from twm_fast.reference import categorical_sample_ref, gae_ref, rel_attention_ref


def rel_attention_loops(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale):
    """SPEC 3 written out one query, key and head at a time, in float64."""
    B, T, H, D = q.shape
    S, R = k.shape[1], rel_pos.shape[0]
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                scores = []
                for j in range(S):
                    if not allowed[b, i, j]:
                        scores.append(-math.inf)
                        continue
                    d = int(dist[b, i, j] if dist.dim() == 3 else dist[i, j])
                    d = min(max(d, 0), R - 1)
                    content = sum((q[b, i, h, e] + u_bias[h, e]) * k[b, j, h, e] for e in range(D))
                    position = sum((q[b, i, h, e] + v_bias[h, e]) * rel_pos[d, h, e] for e in range(D))
                    scores.append(float(content + position) * scale)
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for j in range(S):
                    out[b, i, h] += weights[j] / total * v[b, j, h].double()
    return out


@pytest.mark.parametrize("batched_dist", [False, True])
def test_rel_attention_ref_matches_per_pair_loops(batched_dist):
    B, T, S, H, D, R = 2, 3, 6, 2, 4, 5  # R < the largest distance: clamping is exercised
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, S, H, D), torch.randn(B, S, H, D)
    rel_pos, u_bias, v_bias = torch.randn(R, H, D), torch.randn(H, D), torch.randn(H, D)
    positions = torch.arange(S)
    dist = positions[S - T:, None] - positions[None, :]                       # (T, S), queries last
    allowed = (dist >= 0)[None].repeat(B, 1, 1)
    allowed[1, :, :2] = False                                                 # an episode boundary at 2
    if batched_dist:
        dist = dist[None].repeat(B, 1, 1)
        dist[0] += torch.randint(0, 3, (T, S))                                # per-trajectory distances
    scale = 1 / 4
    expected = rel_attention_loops(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale)
    out = rel_attention_ref(q, k, v, rel_pos, u_bias, v_bias, dist, allowed, scale)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_rel_attention_ref_dropout_keeps_expectation():
    copies, T, S, H, D = 4000, 2, 4, 1, 4  # one input repeated over the batch: independent masks
    q, k, v = (t.expand(copies, -1, H, D) for t in (torch.randn(1, T, H, D), torch.randn(1, S, H, D),
                                                    torch.randn(1, S, H, D)))
    args = (torch.randn(S, H, D), torch.randn(H, D), torch.randn(H, D),
            torch.zeros(T, S, dtype=torch.long), torch.ones(copies, T, S, dtype=torch.bool), 0.5)
    plain = rel_attention_ref(q, k, v, *args)
    dropped = rel_attention_ref(q, k, v, *args, dropout_p=0.25).mean(0)
    torch.testing.assert_close(dropped, plain[0], atol=0.1, rtol=0.1)


def test_categorical_ref_probabilities_and_entropy():
    logits = torch.randn(4, 3, 7, dtype=torch.float64)
    noise = torch.rand(4, 3, 7, dtype=torch.float64)
    onehot, probs, log_probs, entropy = categorical_sample_ref(logits, noise, "sample")
    expected = logits.exp() / logits.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(log_probs, expected.log())
    torch.testing.assert_close(entropy, -(expected * expected.log()).sum(-1))
    assert torch.equal(onehot.sum(-1), torch.ones(4, 3, dtype=torch.float64))
    gumbel = -torch.log(-torch.log(noise))
    assert torch.equal(onehot.argmax(-1), (logits + gumbel).argmax(-1))
    mode, _, _, _ = categorical_sample_ref(logits, None, "argmax")
    assert torch.equal(mode.argmax(-1), logits.argmax(-1))


def test_categorical_ref_straight_through_gradient_is_the_softmax_jacobian():
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    onehot, probs, _, _ = categorical_sample_ref(logits, torch.rand(2, 3, 5, dtype=torch.float64),
                                                 "straight_through")
    torch.testing.assert_close(onehot.detach(), torch.nn.functional.one_hot(onehot.argmax(-1), 5).double())
    upstream = torch.randn(2, 3, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad((onehot * upstream).sum(), logits)
    p = probs.detach()
    expected = p * (upstream - (p * upstream).sum(-1, keepdim=True))
    torch.testing.assert_close(grad, expected)


def test_categorical_ref_samples_follow_the_probabilities():
    C, draws = 16, 20_000
    logits = torch.randn(C)
    logits = logits.expand(draws, 1, C)
    onehot, probs, _, _ = categorical_sample_ref(logits, torch.rand(draws, 1, C), "sample")
    counts = onehot.sum((0, 1)).double()
    expected = probs[0, 0].double() / probs[0, 0].double().sum() * draws
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_categorical_ref_rejects_bad_modes():
    with pytest.raises(ValueError, match="unknown mode"):
        categorical_sample_ref(torch.randn(1, 1, 4), torch.rand(1, 1, 4), "mean")
    with pytest.raises(ValueError, match="needs uniform noise"):
        categorical_sample_ref(torch.randn(1, 1, 4), None, "sample")


def test_gae_ref_hand_computed():
    # One trajectory, H = 3, lam = 0.5; a reset after step 1 zeroes g_1 (no bootstrap across it).
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    discounts = torch.tensor([[0.9, 0.0, 0.8]])
    values = torch.tensor([[0.5, 1.0, 2.0, 4.0]])
    # deltas: 1 + 0.9*1 - 0.5 = 1.4;  2 + 0*2 - 1 = 1.0;  3 + 0.8*4 - 2 = 4.2
    # A_2 = 4.2;  A_1 = 1.0 + 0*0.5*4.2 = 1.0;  A_0 = 1.4 + 0.9*0.5*1.0 = 1.85
    expected = torch.tensor([[1.85, 1.0, 4.2]])
    torch.testing.assert_close(gae_ref(rewards, discounts, values, 0.5), expected)


def test_gae_ref_lambda_one_is_the_discounted_return_minus_value():
    rewards, discounts = torch.rand(3, 5, dtype=torch.float64), torch.full((3, 5), 0.9, dtype=torch.float64)
    values = torch.rand(3, 6, dtype=torch.float64)
    ret = values[:, -1]
    returns = []
    for t in reversed(range(5)):
        ret = rewards[:, t] + discounts[:, t] * ret
        returns.insert(0, ret)
    expected = torch.stack(returns, 1) - values[:, :-1]
    torch.testing.assert_close(gae_ref(rewards, discounts, values, 1.0), expected)


def test_precision_rule_of_the_gpu_tests():
    """The bf16 rule the GPU tests apply: the kernel's error at most twice bf16 PyTorch's."""
    import pytest

    from twm_fast.testing import assert_fp32_close_or_within_bf16_bound

    exact = torch.randn(1000)
    lowp = exact.bfloat16()                                   # PyTorch's own bf16 rounding
    assert_fp32_close_or_within_bf16_bound("ok", lowp, lowp, exact, torch.bfloat16)
    with pytest.raises(AssertionError, match="bfloat16 kernel error"):
        assert_fp32_close_or_within_bf16_bound("bad", lowp + 0.1, lowp, exact, torch.bfloat16)
    assert_fp32_close_or_within_bf16_bound("fp32", exact + 1e-6, exact, exact, torch.float32)
    with pytest.raises(AssertionError, match="fp32 error"):
        assert_fp32_close_or_within_bf16_bound("fp32", exact + 1e-2, exact, exact, torch.float32)
