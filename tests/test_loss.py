"""Hand-worked numbers for every function in loss.py."""
import math

import pytest
import torch

import loss as L


def test_advantage_without_std_is_reward_minus_group_mean():
    # group 0: [1, 0, 0, 0] mean 0.25;  group 1: [1, 1] mean 1
    r = torch.tensor([1.0, 0, 0, 0, 1, 1])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    assert L.group_advantages(r, g).tolist() == [0.75, -0.25, -0.25, -0.25, 0.0, 0.0]


def test_advantage_with_std_uses_bessel_std():
    # [1, 0, 0, 0]: squared deviations 0.5625 + 3 * 0.0625 = 0.75; / (4 - 1) = 0.25; std = 0.5
    r = torch.tensor([1.0, 0, 0, 0])
    A = L.group_advantages(r, torch.zeros(4, dtype=torch.long), scale_by_std=True)
    assert torch.allclose(A, torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))
    assert A[0].item() == pytest.approx(1.5, abs=1e-5)


@pytest.mark.parametrize("scale", [False, True])
def test_all_equal_group_has_exactly_zero_advantage(scale):
    for value in (0.0, 1.0):
        A = L.group_advantages(torch.full((8,), value), torch.zeros(8, dtype=torch.long), scale_by_std=scale)
        assert torch.equal(A, torch.zeros(8))
    A = L.group_advantages(torch.tensor([1.0]), torch.tensor([0]), scale_by_std=scale)  # a group of one
    assert torch.equal(A, torch.zeros(1))


def test_advantage_groups_of_different_sizes():
    # the paper refines only all-wrong groups, so groups are 7 + 1 and 8
    r = torch.tensor([0.0] * 7 + [1.0] + [1.0] + [0.0] * 7)
    g = torch.tensor([0] * 8 + [1] * 8)
    A = L.group_advantages(r, g)
    assert A[7].item() == pytest.approx(0.875) and A[0].item() == pytest.approx(-0.125)
    assert A[8].item() == pytest.approx(0.875) and A[9].item() == pytest.approx(-0.125)


def test_shaping_gradient_at_half():
    # d f / d logp = gamma p / (p + gamma)^2 = 0.1 * 0.5 / 0.36 = 0.13889
    logp = torch.tensor(math.log(0.5), requires_grad=True)
    f = L.shaping(torch.exp(logp), 0.1)
    f.backward()
    assert f.item() == pytest.approx(0.5 / 0.6)
    assert logp.grad.item() == pytest.approx(0.138889, abs=1e-5)


def test_gamma_zero_is_rejected():
    with pytest.raises(AssertionError):
        L.shaping(torch.tensor([0.5]), 0.0)


def _grad(logp_value, old_value, A, off, clip_eps=0.2, gamma=0.1):
    logp = torch.tensor([[logp_value]], requires_grad=True)
    loss = L.policy_loss(logp, torch.tensor([[old_value]]), torch.tensor([A]), torch.tensor([off]),
                         clip_eps=clip_eps, gamma=gamma).sum()
    loss.backward()
    return loss.item(), logp.grad.item()


def test_on_policy_ratio_gradient_at_theta_old_is_minus_advantage():
    # ratio = exp(logp - old) = 1; d(-A ratio)/dlogp = -A ratio = -A, clipped or not
    for clip in (0.2, None):
        value, g = _grad(math.log(0.3), math.log(0.3), 2.0, False, clip_eps=clip)
        assert value == pytest.approx(-2.0) and g == pytest.approx(-2.0)


def test_ppo_clip():
    # ratio 1.5 > 1.2 with A > 0: clipped objective is flat -> zero gradient
    value, g = _grad(math.log(1.5), 0.0, 1.0, False)
    assert value == pytest.approx(-1.2) and g == 0.0
    # with A < 0 the pessimistic (unclipped) term 1.5 is kept and the gradient flows
    value, g = _grad(math.log(1.5), 0.0, -1.0, False)
    assert value == pytest.approx(1.5) and g == pytest.approx(1.5)
    # without clip (the release), the ratio term is used as is
    value, g = _grad(math.log(1.5), 0.0, 1.0, False, clip_eps=None)
    assert value == pytest.approx(-1.5) and g == pytest.approx(-1.5)


def test_refinement_tokens_use_shaping_and_ignore_ratio_and_clip():
    # p = 0.5, A = 1: loss = -f(0.5) = -0.8333, gradient -0.13889; old_logp (far away) is ignored
    value, g = _grad(math.log(0.5), math.log(0.01), 1.0, True)
    assert value == pytest.approx(-0.5 / 0.6) and g == pytest.approx(-0.138889, abs=1e-5)
    # gamma None: plain -A * logp, gradient -A
    value, g = _grad(math.log(0.5), 0.0, 1.0, True, gamma=None)
    assert value == pytest.approx(-math.log(0.5)) and g == pytest.approx(-1.0)


def test_aggregation_unchanged_by_micro_batch_split():
    torch.manual_seed(0)
    per_tok, mask = torch.randn(10, 7), (torch.rand(10, 7) > 0.3)
    w = torch.rand(10)
    denom = 10 * 7
    full = L.aggregate(per_tok, mask, denom, w)
    parts = sum(L.aggregate(per_tok[s], mask[s], denom, w[s]) for s in (slice(0, 3), slice(3, 4), slice(4, 10)))
    assert torch.allclose(full, parts)
    # a hand value: two tokens of loss 1 and 3, one padded token of 100, denominator 4
    assert L.aggregate(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]), 4).item() == 1.0


def test_padding_gets_zero_gradient():
    logp = torch.log(torch.full((2, 4), 0.5)).requires_grad_()
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    per_tok = L.policy_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.tensor([False, True]),
                            clip_eps=0.2, gamma=0.1)
    L.aggregate(per_tok, mask, 8).backward()
    assert torch.equal(logp.grad[0, 2:], torch.zeros(2))
    assert (logp.grad[0, :2] != 0).all() and (logp.grad[1] != 0).all()
    # on-policy token: -A/8 = -0.125; refinement token: +0.13889/8
    assert logp.grad[0, 0].item() == pytest.approx(-0.125)
    assert logp.grad[1, 0].item() == pytest.approx(0.138889 / 8, abs=1e-6)


def test_entropy_hand_values():
    assert L.entropy(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
    # two outcomes with p = 0.75 / 0.25: H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    logits = torch.log(torch.tensor([[[0.75, 0.25]]]))
    assert L.entropy(logits).item() == pytest.approx(0.562335, abs=1e-6)


def test_kl_k3():
    assert L.kl_k3(torch.zeros(3), torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    # ref - logp = ln 2: 2 - ln 2 - 1 = 0.306853
    assert L.kl_k3(torch.tensor([0.0]), torch.tensor([math.log(2)])).item() == pytest.approx(0.306853, abs=1e-6)


def test_off_policy_health_by_hand():
    # seq 0 (refinement): p = 0.5, 0.25, then padding; seq 1 (initial): ratios 0.5/0.4 = 1.25 (clipped at
    # eps 0.2) and 1.0 (not), then padding
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.3, 0.9]]))
    old = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.4, 0.3, 0.9]]))
    ent = torch.tensor([[1.0, 2.0, 9.0], [0.5, 0.7, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    h = L.off_policy_health(logp, ent, mask, torch.tensor([True, False]), old, clip_eps=0.2, gamma=0.1)
    assert h["off_tokens"] == 2 and h["on_tokens"] == 2
    assert float(h["off_p"]) == pytest.approx(0.75)                      # 0.5 + 0.25
    assert float(h["off_f"]) == pytest.approx(0.5 / 0.6 + 0.25 / 0.35)   # f(p) = p / (p + 0.1): 0.8333 + 0.7143
    assert float(h["off_entropy"]) == pytest.approx(3.0) and float(h["on_entropy"]) == pytest.approx(1.2)
    assert h["on_clipped"] == 1
    no_shaping = L.off_policy_health(logp, ent, mask, torch.tensor([True, False]), old, clip_eps=None, gamma=None)
    assert float(no_shaping["off_f"]) == pytest.approx(0.75) and no_shaping["on_clipped"] == 0
