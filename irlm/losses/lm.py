"""Language modelling: next-token cross-entropy, the loss of recovery pretraining and pruning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Mean NLL of tokens 2..T given their prefixes; padded positions are not targets.
    logits (B, T, V), input_ids and attention_mask (B, T)."""
    targets = input_ids[:, 1:].clone()  # (B, T-1)
    if attention_mask is not None:
        targets[attention_mask[:, 1:] == 0] = -100
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
