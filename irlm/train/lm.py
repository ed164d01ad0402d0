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


class SFTTask(LMTask):
    """Prompt -> target pairs of token ids; the loss covers the target tokens only.

    Used where a model must learn to *produce* text given a context it should not learn to model:
    Self-Retrieval (sentence/query -> passage, assessments, answers) and reasoning cold starts.
    """

    def batch(self, examples: list[tuple[list[int], list[int]]]):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p) + len(t) for p, t in examples)
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        target = torch.zeros_like(ids)
        for row, (prompt, tgt) in enumerate(examples):  # right padding: positions start at 0 for every row
            n = len(prompt) + len(tgt)
            ids[row, :n] = torch.tensor(prompt + tgt)
            attention[row, :n] = 1
            target[row, len(prompt) : n] = 1
        dev = self.model.device
        return ids.to(dev), attention.to(dev), target.to(dev)

    def step(self, examples, scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        ids, attention, target = self.batch(examples)
        logits = self.model(input_ids=ids, attention_mask=attention).logits
        loss = next_token_loss(logits, ids, target)  # only target positions are predicted
        (loss * scale).backward()
        return {"lm": loss.item()}
