"""Pooling as pure functions of hidden states and the attention mask.

Every function is correct under both left and right padding: positions come from the mask,
never from the sequence length.
"""

from __future__ import annotations

import torch

from irlm.errors import InputError


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token in each row. mask: (B, T) of 0/1 -> (B,)."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    return (mask.long() * positions).argmax(dim=1)


def first_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the first real token in each row (left padding shifts it)."""
    return mask.long().argmax(dim=1)


def _gather(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, index]  # (B, C)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last real token (EOS when it was appended). (B, T, C) -> (B, C)."""
    return _gather(hidden, last_index(mask))


def first_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the first real token ([CLS] for BERT-style encoders)."""
    return _gather(hidden, first_index(mask))


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' states. (B, T, C) -> (B, C)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def special_token(hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Hidden state at the last occurrence of `token_id` (e.g. `<emb>`) in each row.

    Raises ValueError naming the rows that lack the token.
    """
    hits = input_ids == token_id  # (B, T)
    missing = (~hits.any(dim=1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"pooling token id {token_id} missing in batch rows {missing}")
    return _gather(hidden, last_index(hits))


POOLERS = {"last": last_token, "eos": last_token, "mean": mean, "cls": first_token}


def pool(name: str, hidden: torch.Tensor, mask: torch.Tensor, input_ids=None, token_id=None) -> torch.Tensor:
    if name == "token":
        return special_token(hidden, input_ids, token_id)
    if name not in POOLERS:
        raise InputError(f"unknown pooling '{name}'; choose from {', '.join([*POOLERS, 'token'])}")
    return POOLERS[name](hidden, mask)
