"""InfoNCE with in-batch and hard negatives, across processes, with optional gradient caching.

Layout of a batch: B queries, and for each query 1 positive followed by H hard negatives, so
docs are (B * (1 + H), C) and query i's positive sits at row i * (1 + H). The denominator of
query i holds every document of the (global) batch: its positive, its hard negatives and all
other queries' documents (METHODS.md §0).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process along dim 0, keeping gradients to every copy."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def info_nce_from_embeddings(q: torch.Tensor, d: torch.Tensor, temperature: float = 0.05,
                             group: int = 1, gather: bool = True) -> torch.Tensor:  # fmt: skip
    """Mean InfoNCE over the local queries. q: (B, C), d: (B * group, C), both L2-normalised.

    Example:
        >>> q = torch.eye(2); d = torch.eye(2)
        >>> round(info_nce_from_embeddings(q, d, temperature=1.0).item(), 4)
        0.3133
    """
    offset = 0
    if gather:
        all_d = gather_with_grad(d)  # (W * B * group, C)
        if all_d is not d:
            offset = dist.get_rank() * d.shape[0]
        d = all_d
    scores = q @ d.T / temperature  # (B, N)
    target = offset + torch.arange(q.shape[0], device=q.device) * group
    return F.cross_entropy(scores, target)


class ContrastiveLoss:
    """InfoNCE on an encoder; `cache_chunk` > 0 turns on GradCache (fixed memory at any batch size).

    `__call__` embeds and returns named parts; `backward_cached` does the whole step with
    cached gradients (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size...").
    """

    def __init__(self, encoder, temperature: float = 0.05, cache_chunk: int = 0):
        self.encoder, self.temperature, self.cache_chunk = encoder, temperature, cache_chunk

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        q = self.encoder.embed(**batch["query"])
        d = self.encoder.embed(**batch["docs"])
        return {"infonce": info_nce_from_embeddings(q, d, self.temperature, batch["group"])}

    def backward_cached(self, batch: dict, scale: float = 1.0) -> dict[str, float]:
        """Loss and gradients as plain backward would give, holding one chunk's activations at a time."""
        q_chunks, q_reps, q_rng = self._embed_no_grad(batch["query"])
        d_chunks, d_reps, d_rng = self._embed_no_grad(batch["docs"])
        q, d = torch.cat(q_reps).requires_grad_(), torch.cat(d_reps).requires_grad_()
        loss = info_nce_from_embeddings(q, d, self.temperature, batch["group"])
        (loss * scale).backward()
        q_grads, d_grads = q.grad.split([len(r) for r in q_reps]), d.grad.split([len(r) for r in d_reps])
        work = list(zip(q_chunks, q_grads, q_rng)) + list(zip(d_chunks, d_grads, d_rng))
        for chunk, grad, rng in work:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)  # same dropout masks as the cached pass
                emb = self.encoder.embed(**chunk)
                emb.backward(grad)  # d(loss)/d(params) = sum over chunks of grad . d(emb)/d(params)
        return {"infonce": loss.item()}

    def _embed_no_grad(self, inputs: dict):
        chunks = _split(inputs, self.cache_chunk)
        reps, states = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(torch.get_rng_state())
                reps.append(self.encoder.embed(**chunk))
        return chunks, reps, states


def _split(inputs: dict, size: int) -> list[dict]:
    n = inputs["input_ids"].shape[0]
    return [{k: v[i : i + size] for k, v in inputs.items()} for i in range(0, n, size)]
