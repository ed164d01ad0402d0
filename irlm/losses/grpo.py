"""GRPO: group-normalised advantages and the clipped policy loss (Shao et al., 2024, DeepSeekMath).

G completions are sampled per query; each one's advantage is its reward standardised within its
group, so no value model is needed. The policy loss is PPO's clipped surrogate per token, with an
optional KL penalty to a frozen reference model.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_g) / (std_g + eps) within each query's group. rewards (Q, G) -> advantages (Q, G).

    std is the population std (unbiased=False): the group is the whole population being ranked,
    and G = 1 then gives 0 rather than NaN. A group whose rewards are all equal gets zeros, so it
    contributes no policy gradient.

    Example:
        >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]])).round(decimals=4)
        tensor([[ 1., -1., -1.,  1.]])
    """
    mean = rewards.mean(dim=1, keepdim=True)  # (Q, 1)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)  # (Q, 1)
    return (rewards - mean) / (std + eps)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate exp(ref - lp) - (ref - lp) - 1: unbiased, >= 0."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens per sequence, then over sequences; an empty sequence contributes 0."""
    per_seq = (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
    return per_seq.mean()


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip: float = 0.2, ref_logprobs: torch.Tensor | None = None,
              kl_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Clipped GRPO loss to minimise. logprobs, old_logprobs, ref_logprobs, mask (B, T); advantages (B,).

    Per token: -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A) + kl_coef * KL_k3, with
    ratio = exp(logprobs - old_logprobs). Averaging follows DeepSeekMath's
    1/G sum_i 1/|o_i| sum_t: each sequence's valid tokens first, then the sequences, so a long
    completion weighs no more than a short one. Returns the loss and detached named parts for
    logging (`policy`, `kl`, `clip_fraction`).

    Example:
        >>> lp = torch.zeros(1, 2); m = torch.ones(1, 2)
        >>> grpo_loss(lp, lp, torch.tensor([1.0]), m)[0]
        tensor(-1.)
    """
    if kl_coef and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    mask = mask.to(logprobs.dtype)
    old_logprobs = old_logprobs.detach()
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    adv = advantages.detach().unsqueeze(1)  # (B, 1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)  # (B, T)
    policy = -_masked_mean(surrogate, mask)
    kl = policy.new_zeros(())
    if ref_logprobs is not None:
        kl = _masked_mean(k3_kl(logprobs, ref_logprobs.detach()), mask)
    clipped = ((ratio - 1).abs() > clip).to(logprobs.dtype)
    parts = {"policy": policy.detach(), "kl": kl.detach(), "clip_fraction": _masked_mean(clipped, mask).detach()}
    return policy + kl_coef * kl, parts
