"""The language-modelling task: next-token prediction on packed blocks (recovery pretraining)."""

from __future__ import annotations

import torch

from irlm.losses.lm import next_token_loss


class LMTask:
    """Task for irlm.train.loop.Trainer over examples that are token blocks (lists of ids)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def parameters(self):
        return self.model.parameters()

    def named_parameters(self):
        return self.model.named_parameters()

    def batch(self, examples: list[list[int]]) -> torch.Tensor:
        return torch.tensor(examples, dtype=torch.long, device=self.model.device)  # (B, T)

    def step(self, examples: list[list[int]], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        ids = self.batch(examples)
        loss = next_token_loss(self.model(input_ids=ids).logits, ids)
        (loss * scale).backward()
        return {"lm": loss.item()}

    def save(self, folder) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
