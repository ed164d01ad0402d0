"""GRPO advantages and clipped loss against hand computations and a per-token reference."""

from __future__ import annotations

import math

import pytest
import torch

from irlm.losses.grpo import group_advantages, grpo_loss, k3_kl


def reference_loss(lp, old, adv, mask, clip, ref=None, kl_coef=0.0):
    """Plain loops over sequences and tokens: DeepSeekMath's 1/G sum_i 1/|o_i| sum_t."""
    per_seq = []
    for i in range(lp.shape[0]):
        terms = []
        for t in range(lp.shape[1]):
            if not mask[i, t]:
                continue
            ratio = math.exp(lp[i, t].item() - old[i, t].item())
            a = adv[i].item()
            term = -min(ratio * a, min(max(ratio, 1 - clip), 1 + clip) * a)
            if ref is not None:
                d = ref[i, t].item() - lp[i, t].item()
                term += kl_coef * (math.exp(d) - d - 1)
            terms.append(term)
        per_seq.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(per_seq) / len(per_seq)


def random_batch(b=5, t=7, seed=0):
    torch.manual_seed(seed)
    lp = -torch.rand(b, t, dtype=torch.float64) * 3
    old = lp + torch.randn(b, t, dtype=torch.float64) * 0.3  # ratios both inside and outside the clip range
    ref = lp + torch.randn(b, t, dtype=torch.float64) * 0.5
    adv = torch.randn(b, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5, 6])[:b]
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)  # right padding
    return lp, old, ref, adv, mask


# ---- advantages


def test_advantages_of_a_two_valued_group():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert torch.allclose(adv, torch.tensor([[1.0, -1.0, -1.0, 1.0]]), atol=1e-5)


def test_advantages_hand_computed_per_group():
    rewards = torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    std = math.sqrt(2 / 3)  # population std of 0, 1, 2
    want = torch.tensor([[-1 / std, 0.0, 1 / std], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(group_advantages(rewards, eps=0.0)[0], want[0], atol=1e-12)
    assert torch.equal(group_advantages(rewards)[1], torch.zeros(3, dtype=torch.float64))  # zero variance


def test_advantages_use_the_population_std_and_eps():
    rewards = torch.tensor([[3.0, 1.0]], dtype=torch.float64)  # mean 2, population std 1 (sample std 1.41)
    assert torch.allclose(group_advantages(rewards, eps=1.0), torch.tensor([[0.5, -0.5]], dtype=torch.float64))
    assert torch.equal(group_advantages(torch.tensor([[4.0]])), torch.zeros(1, 1))  # G = 1: no NaN


# ---- loss


def test_loss_matches_a_per_token_reference():
    lp, old, _, adv, mask = random_batch()
    loss, parts = grpo_loss(lp, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(reference_loss(lp, old, adv, mask, 0.2), abs=1e-12)
    assert parts["policy"].item() == pytest.approx(loss.item(), abs=1e-12)
    assert parts["kl"].item() == 0.0


def test_loss_with_kl_matches_the_reference():
    lp, old, ref, adv, mask = random_batch(seed=1)
    loss, parts = grpo_loss(lp, old, adv, mask, clip=0.1, ref_logprobs=ref, kl_coef=0.04)
    assert loss.item() == pytest.approx(reference_loss(lp, old, adv, mask, 0.1, ref, 0.04), abs=1e-12)
    assert loss.item() == pytest.approx((parts["policy"] + 0.04 * parts["kl"]).item(), abs=1e-12)


def test_on_policy_loss_is_minus_the_mean_advantage():
    # ratio 1 everywhere: each sequence's token mean is -A_i, whatever its length
    lp = torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    adv = torch.tensor([1.0, -2.0, 4.0])
    loss, parts = grpo_loss(lp, lp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)  # -(1 - 2 + 4) / 3
    assert parts["clip_fraction"].item() == 0.0


def test_padded_tokens_do_not_change_the_loss_or_get_gradient():
    lp, old, ref, adv, mask = random_batch(seed=2)
    lp = lp.clone().requires_grad_(True)
    loss, _ = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    loss.backward()
    assert torch.all(lp.grad[~mask] == 0) and torch.any(lp.grad[mask] != 0)
    noise = torch.randn_like(lp) * 5
    lp2, old2, ref2 = (x.detach() + noise * ~mask for x in (lp, old, ref))
    loss2, _ = grpo_loss(lp2, old2, adv, mask, ref_logprobs=ref2, kl_coef=0.1)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-12)


def test_an_empty_sequence_contributes_zero():
    lp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    loss, _ = grpo_loss(lp, lp, torch.tensor([2.0, 7.0]), mask)
    assert loss.item() == pytest.approx(-1.0)  # (-2 + 0) / 2


def test_clipping_cuts_the_gradient_only_where_ppo_says():
    # ratios e^0.5 = 1.65 and e^-0.5 = 0.61 lie outside [0.8, 1.2]; e^0.1 = 1.105 inside
    old = torch.zeros(4, 3)
    lp = torch.tensor([[0.5, 0.1, 0.5], [-0.5, 0.1, -0.5], [-0.5, 0.1, -0.5], [0.5, 0.1, 0.5]]).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, parts = grpo_loss(lp, old, adv, torch.ones(4, 3), clip=0.2)
    loss.backward()
    g = lp.grad
    assert torch.all(g[0, [0, 2]] == 0)  # A > 0, ratio > 1.2: clipped, no gradient
    assert torch.all(g[1, [0, 2]] == 0)  # A < 0, ratio < 0.8: clipped, no gradient
    # the pessimistic min keeps the unclipped term when it is lower, so these still learn
    assert torch.all(g[2, [0, 2]] != 0)  # A > 0, ratio < 0.8
    assert torch.all(g[3, [0, 2]] != 0)  # A < 0, ratio > 1.2
    assert torch.all(g[:, 1] != 0)  # inside the range
    # d/dlp of -(ratio * A) / (3 tokens * 4 sequences) at ratio e^0.1, A = 1
    assert g[0, 1].item() == pytest.approx(-math.exp(0.1) / 12, abs=1e-6)
    assert parts["clip_fraction"].item() == pytest.approx(8 / 12)


def test_kl_is_zero_at_the_reference_and_positive_elsewhere():
    lp, old, _, adv, mask = random_batch(seed=3)
    base, _ = grpo_loss(lp, old, adv, mask)
    same, parts = grpo_loss(lp, old, adv, mask, ref_logprobs=lp.clone(), kl_coef=0.5)
    assert parts["kl"].item() == 0.0 and same.item() == pytest.approx(base.item(), abs=1e-12)
    shifted, parts = grpo_loss(lp, old, adv, mask, ref_logprobs=lp + 0.3, kl_coef=0.5)
    k = math.exp(0.3) - 0.3 - 1  # the same on every token, so also the per-sequence and overall mean
    assert parts["kl"].item() == pytest.approx(k, abs=1e-12)
    assert shifted.item() == pytest.approx(base.item() + 0.5 * k, abs=1e-12)


def test_k3_is_nonnegative_and_zero_only_at_equality():
    lp = torch.linspace(-3, 0, 11)
    assert torch.all(k3_kl(lp, lp) == 0)
    assert torch.all(k3_kl(lp, lp.flip(0))[torch.arange(11) != 5] > 0)


def test_kl_coef_without_a_reference_is_an_error():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(lp, lp, torch.ones(1), torch.ones(1, 2), kl_coef=0.1)


def test_no_gradient_flows_to_old_or_reference_logprobs():
    lp, old, ref, adv, mask = random_batch(seed=4)
    old, ref, adv = (x.clone().requires_grad_(True) for x in (old, ref, adv))
    loss, _ = grpo_loss(lp.requires_grad_(True), old, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    loss.backward()
    assert old.grad is None and ref.grad is None and adv.grad is None
