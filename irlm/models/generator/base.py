"""The text-generation interface every backend implements: prompts in, `Generation`s out.

A prompt is either a plain string (sent as is) or a chat, a list of {"role", "content"} messages
that the backend renders with the model's chat template.

Example:
    >>> gen = load_generator("smollm2-135m")  # doctest: +SKIP
    >>> chat = [{"role": "user", "content": "Say hi"}]
    >>> gen.generate([chat], SamplingParams(max_new_tokens=8))[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

Chat = list[dict]
Prompt = str | Chat


class BudgetExceeded(RuntimeError):
    """The generator's token budget is spent; finished work is kept, the caller stops cleanly."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy: reproducible data by default
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # generation ends before the first of these strings
    seed: int | None = None  # with temperature > 0: the same seed draws the same text


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # stop|length


@dataclass
class Usage:
    """Tokens spent so far, and an optional cap on them (prompt + completion)."""

    budget: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def check(self) -> None:
        if self.budget is not None and self.total >= self.budget:
            raise BudgetExceeded(f"token budget of {self.budget} spent ({self.total} used)")

    def add(self, gens: list[Generation], seconds: float) -> None:
        with self._lock:
            self.prompt_tokens += sum(g.prompt_tokens for g in gens)
            self.completion_tokens += sum(g.completion_tokens for g in gens)
            self.seconds += seconds

    def as_dict(self) -> dict:
        rate = self.completion_tokens / self.seconds if self.seconds else 0.0
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "seconds": round(self.seconds, 3), "completion_tokens_per_s": round(rate, 2)}  # fmt: skip


class Generator(Protocol):
    name: str  # recorded as the teacher in provenance
    context_length: int  # prompt + completion tokens the model accepts
    usage: Usage

    def generate(self, prompts: list[Prompt], params: SamplingParams | None = None) -> list[Generation]: ...

    def count_tokens(self, prompt: Prompt) -> int: ...


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
