"""Pooling is a pure function of hidden states and the mask, correct under left and right padding."""

from __future__ import annotations

import pytest
import torch

from irlm.models import pooling

LENGTHS = [3, 5, 1, 4]
T, C = 6, 4


def _batches():
    """The same real-token states padded on the right and on the left; pads hold huge junk."""
    torch.manual_seed(0)
    real = [torch.randn(n, C) for n in LENGTHS]
    right = torch.full((len(LENGTHS), T, C), 1e6)
    left = torch.full((len(LENGTHS), T, C), -1e6)
    mask_r = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    mask_l = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    for b, states in enumerate(real):
        n = len(states)
        right[b, :n], mask_r[b, :n] = states, 1
        left[b, T - n :], mask_l[b, T - n :] = states, 1
    return real, (right, mask_r), (left, mask_l)


def test_last_index_under_both_paddings():
    _, (_, mask_r), (_, mask_l) = _batches()
    assert pooling.last_index(mask_r).tolist() == [n - 1 for n in LENGTHS]
    assert pooling.last_index(mask_l).tolist() == [T - 1] * len(LENGTHS)
    assert pooling.first_index(mask_l).tolist() == [T - n for n in LENGTHS]


@pytest.mark.parametrize("name", ["last", "eos"])
def test_last_token_same_under_left_and_right_padding(name):
    real, (right, mask_r), (left, mask_l) = _batches()
    expected = torch.stack([s[-1] for s in real])
    torch.testing.assert_close(pooling.pool(name, right, mask_r), expected, rtol=0, atol=0)
    torch.testing.assert_close(pooling.pool(name, left, mask_l), expected, rtol=0, atol=0)


def test_first_token_same_under_left_and_right_padding():
    real, (right, mask_r), (left, mask_l) = _batches()
    expected = torch.stack([s[0] for s in real])
    torch.testing.assert_close(pooling.first_token(right, mask_r), expected, rtol=0, atol=0)
    torch.testing.assert_close(pooling.first_token(left, mask_l), expected, rtol=0, atol=0)


def test_mean_ignores_pads():
    real, (right, mask_r), (left, mask_l) = _batches()
    expected = torch.stack([s.mean(dim=0) for s in real])
    torch.testing.assert_close(pooling.mean(right, mask_r), expected)
    torch.testing.assert_close(pooling.mean(left, mask_l), expected)
    assert pooling.mean(right, mask_r).abs().max() < 10  # no 1e6 junk leaked in


def test_mean_bf16_keeps_dtype_and_value():
    real, (right, mask_r), _ = _batches()
    out = pooling.mean(right.clone().masked_fill(mask_r.unsqueeze(-1) == 0, 0).bfloat16(), mask_r)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.stack([s.mean(0) for s in real]), atol=3e-2, rtol=3e-2)


def test_special_token_picks_last_occurrence():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    ids = torch.tensor([[9, 7, 1, 7, 0],  # token 7 twice: the later one (position 3) wins
                        [7, 2, 3, 4, 0]])  # fmt: skip
    out = pooling.special_token(hidden, ids, token_id=7)
    torch.testing.assert_close(out, torch.stack([hidden[0, 3], hidden[1, 0]]))
    torch.testing.assert_close(pooling.pool("token", hidden, torch.ones(2, 5), ids, 7), out)


def test_special_token_missing_raises_naming_rows():
    hidden = torch.zeros(3, 4, 2)
    ids = torch.tensor([[1, 7, 0, 0], [1, 2, 3, 0], [5, 5, 5, 5]])
    with pytest.raises(ValueError, match=r"7 missing in batch rows \[1, 2\]"):
        pooling.special_token(hidden, ids, token_id=7)


def test_unknown_pooling_raises():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pooling.pool("max", torch.zeros(1, 2, 3), torch.ones(1, 2))
