"""Stage I of anchor embeddings: regenerate the paired text from the embedding alone (METHODS.md §1).

The embedding enters the decoder as a one-position prefix in input-embedding space; the target
is teacher-forced; gradients reach the encoding pass through the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(decoder, lm_head, prefix: torch.Tensor, target_ids: torch.Tensor,
                        target_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Mean token NLL of `target_ids` given only `prefix`. prefix (B, C); target (B, T) right-padded.

    Position 0 holds the prefix and predicts t_1; position j holds t_j and predicts t_{j+1}.
    """
    tokens = decoder.get_input_embeddings()(target_ids[:, :-1])  # (B, T-1, C)
    inputs = torch.cat([prefix.unsqueeze(1).to(tokens.dtype), tokens], dim=1)  # (B, T, C)
    ones = torch.ones_like(target_mask[:, :1])
    mask = torch.cat([ones, target_mask[:, :-1]], dim=1)  # (B, T)
    hidden = decoder(inputs_embeds=inputs, attention_mask=mask).last_hidden_state  # (B, T, C)
    logits = lm_head(hidden).float()  # (B, T, V)
    labels = target_ids.masked_fill(target_mask == 0, -100)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def bidirectional_loss(q2d: torch.Tensor, d2q: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
    """L_I = alpha * L_Q2D + (1 - alpha) * L_D2Q; alpha = 0.2 was best in the authors' sweep."""
    return alpha * q2d + (1 - alpha) * d2q
