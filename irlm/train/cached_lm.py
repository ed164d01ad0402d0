"""Cheaper teacher-forced steps for a causal LM: train its top on cached layer-F states (irlm.train.cached).

Under teacher forcing the input of every position is a known token, so the state entering layer F of a
training sequence (prompt + target) depends only on its tokens and the frozen weights, exactly as for an
encoder: it is computed once, kept in the same ActivationCache (same fingerprint, same resumable fill), and
every later step and epoch runs forward and backward through layers F.., the final norm and the head only.
The loss is the full model's on the same batch (tests/integration/test_cached_lm.py).

Where the head is tied to the input embeddings (SmolLM2), training it would move the frozen embeddings the
cache depends on, so the head is untied first: a trainable copy, and `tie_word_embeddings: false` in the
saved config. The saved model is a plain causal LM whose embeddings and lower layers are the base model's.

    lm = cached_lm(model, 24, [prompt + target for prompt, target in examples])  # fills, with progress
    task = CachedSFTTask(lm, tokenizer)      # the shared loop, its checkpoints and resume work unchanged
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from irlm.train.cached import (
    ActivationCache,
    decoder_of,
    fill_cache,
    filled,
    fingerprint,
    freeze_lower,
    gather_states,
    only_layers,
)
from irlm.train.lm import SFTTask
from irlm.train.loop import world
from irlm.utils import cache_dir


def untie_head(model) -> None:
    """Give the output head its own copy of the weights it shares with the input embeddings, if it does."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone())
        model.config.tie_word_embeddings = False  # saved and loaded as two matrices from now on


def target_loss(hidden: torch.Tensor, head: nn.Module, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over target positions, as irlm.losses.lm.next_token_loss with the target mask,
    projecting only the states that predict a target token: the prompt's logits are never needed.
    hidden (B, T, C); ids and target (B, T)."""
    pick = target[:, 1:].bool()  # (B, T-1): position t predicts token t + 1
    logits = head(hidden[:, :-1][pick])  # (N, V)
    return F.cross_entropy(logits.float(), ids[:, 1:][pick])


class CachedCausalLM:
    """A causal LM whose embeddings and lower `layers` are frozen and read from an ActivationCache."""

    def __init__(self, model, layers: int, cache: ActivationCache):
        self.model, self.layers, self.cache = model, layers, cache
        self.pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    @classmethod
    def wrap(cls, model, layers: int, folder: str | Path | None = None, dtype: str = "bf16",
             writable: bool = True) -> CachedCausalLM:  # fmt: skip
        untie_head(model)  # before freezing: the frozen embeddings must not take the head with them
        freeze_lower(model, layers)
        key = fingerprint(model, layers, dtype)
        folder = Path(folder) if folder else cache_dir() / "activations" / key
        meta = {"model": getattr(model.config, "_name_or_path", ""), "layers": layers, "fingerprint": key}
        dim = model.get_input_embeddings().embedding_dim
        return cls(model, layers, ActivationCache(folder, dim, dtype, meta, writable))

    @property
    def device(self) -> str:
        return str(self.model.get_input_embeddings().weight.device)

    # ---- the lower layers, run once per sequence ----------------------------------------------
    def pad_right(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids and attention mask; right padding keeps every row's positions at 0.. (as SFTTask)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def lower_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, C): the hidden states entering layer F, as the full model computes them."""
        dec = decoder_of(self.model)
        with only_layers(dec, list(dec.layers[: self.layers]), final_norm=False):
            return dec(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state.float()

    def _compute(self, rows: list[list[int]], keys: list[str]) -> list[torch.Tensor]:
        states = self.lower_states(*self.pad_right(rows))  # (B, T, C)
        out = [s[: len(r)] for s, r in zip(states, rows)]  # causal: padding after a row never reaches it
        self.cache.add(keys, out)
        return out

    def fill(self, rows: list[list[int]], batch_size: int = 16, progress: bool = True) -> int:
        """Cache every token sequence's states that is not cached yet; returns how many were computed."""
        desc = f"cache layer-{self.layers} states"
        return fill_cache(self.cache, rows, self._compute, batch_size, self.device, desc, progress)

    # ---- the top layers, the norm and the head -------------------------------------------------
    def loss(self, rows: list[list[int]], ids: torch.Tensor, attention: torch.Tensor, target: torch.Tensor):
        """The full model's target loss on the batch (ids, attention, target: (B, T)) whose rows are `rows`."""
        states = gather_states(self.cache, rows, ids.shape[1], self._compute).to(self.device)  # (B, T, C)
        dec = decoder_of(self.model)
        with only_layers(dec, list(dec.layers[self.layers :])):
            inputs = states.to(dec.norm.weight.dtype)
            hidden = dec(inputs_embeds=inputs, attention_mask=attention, use_cache=False).last_hidden_state
        return target_loss(hidden, self.model.get_output_embeddings(), ids, target)


def cached_lm(model, layers: int, rows: list[list[int]], folder: str | Path | None = None,
              dtype: str = "bf16", batch_size: int = 16) -> CachedCausalLM:  # fmt: skip
    """Wrap `model` and cache the states of `rows` (token sequences): rank 0 computes what is missing, the
    other ranks wait and read it. `filled` on the result says how many sequences this process computed."""
    lm = CachedCausalLM.wrap(model, layers, folder, dtype, writable=world()[0] == 0)
    return filled(lm, lambda: lm.fill(rows, batch_size))


class CachedSFTTask(SFTTask):
    """SFTTask on a CachedCausalLM: the same examples and loss, the top of the model trained."""

    probe_precision = True  # a step has no side effects: `precision: auto` may time it (irlm.train.precision)

    def __init__(self, lm: CachedCausalLM, tokenizer):
        super().__init__(lm.model, tokenizer)
        self.lm = lm

    def step(self, examples, scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        ids, attention, target = self.batch(examples)  # (B, T) each
        loss = self.lm.loss([p + t for p, t in examples], ids, attention, target)
        (loss * scale).backward()
        return {"lm": loss.item()}
