"""Hard-concrete gates and the augmented Lagrangian: free functions and small modules."""

from __future__ import annotations

import math

import pytest
import torch

from irlm.methods.drama.prune import HardConcrete, Shape, lagrangian, make_lambdas, targets


def test_keep_prob_matches_the_sampled_rate():
    torch.manual_seed(0)
    gate = HardConcrete(4, init_keep=0.5)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-3.0, -0.5, 1.0, 4.0]))
    gate.train()
    draws = torch.stack([gate() for _ in range(20000)])  # (N, 4)
    assert draws.min() >= 0 and draws.max() <= 1
    torch.testing.assert_close((draws > 0).float().mean(0), gate.keep_prob().detach(), atol=0.015, rtol=0)


def test_init_keep_and_eval_gates():
    gate = HardConcrete(3, init_keep=0.95)
    torch.testing.assert_close(gate.keep_prob().detach(), torch.full((3,), 0.95))
    gate.eval()
    assert torch.equal(gate(), gate())  # deterministic in eval
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-5.0, 0.0, 5.0]))
    assert gate().tolist() == [0.0, 0.5, 1.0]  # the stretched sigmoid, clamped to [0, 1]


def test_top_keeps_the_highest_scores_in_order():
    gate = HardConcrete(5)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5]))
    assert gate.top(3).tolist() == [1, 3, 4]


def test_lagrangian_value_and_ascent_on_multipliers():
    lambdas = make_lambdas(["layers"])
    with torch.no_grad():
        lambdas["layers_1"].fill_(2.0)
        lambdas["layers_2"].fill_(3.0)
    s = torch.tensor(0.8, requires_grad=True)
    pen = lagrangian({"layers": s}, {"layers": 0.5}, lambdas)
    assert math.isclose(pen.item(), 2.0 * 0.3 + 3.0 * 0.09, rel_tol=1e-6)
    pen.backward()
    assert math.isclose(s.grad.item(), 2.0 + 2 * 3.0 * 0.3, rel_tol=1e-6)  # masks descend on the penalty
    # the multipliers' gradients are flipped: an optimizer *descent* step raises them while s > target
    assert lambdas["layers_1"].grad.item() < 0 and lambdas["layers_2"].grad.item() < 0
    opt = torch.optim.SGD(lambdas.parameters(), lr=1.0)
    opt.step()
    assert lambdas["layers_1"].item() > 2.0 and lambdas["layers_2"].item() > 3.0


def test_targets_are_fractions():
    t = targets(Shape(30, 576, 3, 1536), Shape(20, 384, 2, 1024))
    assert {k: round(v, 3) for k, v in t.items()} == {"layers": 0.667, "heads": 0.667, "hidden": 0.667,
                                                      "intermediate": 0.667}  # fmt: skip


def test_eval_gate_away_from_saturation():
    """In eval the gate is the stretched sigmoid of log_alpha itself (no 1/beta): checked where it is strictly
    between 0 and 1, where a wrong formula cannot hide behind the clamp."""
    gate = HardConcrete(3).eval()
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-1.0, 0.5, 1.5]))
    want = [1.2 / (1 + math.exp(-a)) - 0.1 for a in (-1.0, 0.5, 1.5)]  # sigmoid * (1.1 - -0.1) + -0.1
    assert all(0 < w < 1 for w in want)
    assert gate().tolist() == pytest.approx(want, abs=1e-6)
