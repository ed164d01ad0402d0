"""Stage I of anchor embeddings: regenerate the paired text from the embedding alone (METHODS.md §1).

The embedding enters the decoder as a one-position prefix in input-embedding space; the target
is teacher-forced; gradients reach the encoding pass through the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# target positions whose logits exist at once: 32 texts x 256 targets over SmolLM2's 49,152 tokens are 1.6 GB
# of float32 logits, several copies of which the plain loss kept for backward (Stage I died of memory on 24 GB)
LOGIT_CHUNK = 1024


def reconstruction_loss(decoder, lm_head, prefix: torch.Tensor, target_ids: torch.Tensor,
                        target_mask: torch.Tensor, chunk: int = LOGIT_CHUNK) -> torch.Tensor:  # fmt: skip
    """Mean token NLL of `target_ids` given only `prefix`. prefix (B, C); target (B, T) right-padded.

    Position 0 holds the prefix and predicts t_1; position j holds t_j and predicts t_{j+1}. The output
    layer runs on the real target positions only, `chunk` at a time, and its logits are recomputed in
    backward rather than kept.
    """
    tokens = decoder.get_input_embeddings()(target_ids[:, :-1])  # (B, T-1, C)
    inputs = torch.cat([prefix.unsqueeze(1).to(tokens.dtype), tokens], dim=1)  # (B, T, C)
    ones = torch.ones_like(target_mask[:, :1])
    mask = torch.cat([ones, target_mask[:, :-1]], dim=1)  # (B, T)
    hidden = decoder(inputs_embeds=inputs, attention_mask=mask).last_hidden_state  # (B, T, C)
    real = target_mask.bool()
    return chunked_nll(hidden[real], lm_head, target_ids[real], chunk)


def chunked_nll(hidden: torch.Tensor, lm_head, labels: torch.Tensor, chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """Mean NLL of `labels` (N,) under lm_head(hidden) (N, C -> N, V), `chunk` rows of logits at a time."""
    total = hidden[:0].float().sum()  # 0, in the graph even with no target (as the whole-pass loss was), no copy
    for start in range(0, len(labels), chunk):
        rows, ids = hidden[start : start + chunk], labels[start : start + chunk]
        total = total + checkpoint(_summed_nll, rows, ids, lm_head, use_reentrant=False)
    return total / max(1, len(labels))


def _summed_nll(rows: torch.Tensor, ids: torch.Tensor, lm_head) -> torch.Tensor:
    return F.cross_entropy(lm_head(rows).float(), ids, reduction="sum")


def bidirectional_loss(q2d: torch.Tensor, d2q: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
    """L_I = alpha * L_Q2D + (1 - alpha) * L_D2Q; alpha = 0.2 was best in the authors' sweep."""
    return alpha * q2d + (1 - alpha) * d2q
