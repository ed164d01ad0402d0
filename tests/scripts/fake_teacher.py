"""A scripted teacher for augmentation tests: deterministic replies, some of them invalid on purpose.

Run as a script it augments a toy corpus slowly enough to be killed mid-way:
    python fake_teacher.py BEIR_DIR OUT.jsonl STRATEGY [--sleep S]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time

from irlm.models.generator import Generation, SamplingParams, Usage


def _key(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest(), 16)


class FakeTeacher:
    """qgen: a question from the passage's words; rerank: candidates ordered by length, longest first.
    Replies are invalid when the prompt hashes to 0 mod `bad_every` (greedy attempt only) or to 0 mod
    `hopeless_every` (every attempt), so both retries and skips happen."""

    name = "fake-teacher"
    context_length = 100_000

    def __init__(self, sleep: float = 0.0, bad_every: int = 4, hopeless_every: int = 7):
        self.sleep, self.bad_every, self.hopeless_every = sleep, bad_every, hopeless_every
        self.usage, self.calls = Usage(), []

    def count_tokens(self, prompt) -> int:
        return sum(len(m["content"].split()) for m in prompt)

    def generate(self, prompts, params: SamplingParams | None = None):
        params = params or SamplingParams()
        self.usage.check()  # as every backend does: a spent budget stops the caller
        self.calls.append((len(prompts), params.temperature))
        time.sleep(self.sleep)
        gens = [Generation(self.reply(p, params.temperature), self.count_tokens(p), 5) for p in prompts]
        self.usage.add(gens, 0.01)
        return gens

    def reply(self, prompt, temperature: float) -> str:
        text = prompt[0]["content"]
        k = _key(text)
        if k % self.hopeless_every == 0 or (k % self.bad_every == 0 and temperature == 0):
            return "The passage is:"  # a preamble: invalid for every parser
        if "Rank the" in text:
            passages = re.findall(r"^\[(\d+)\] (.*)$", text, re.M)
            order = sorted(passages, key=lambda p: -len(p[1]))
            return "] > [".join(i for i, _ in order) + "]"  # the "[" was prefilled
        words = re.sub(r"[^\w ]", "", text.split("Passage:")[-1]).split()
        return " what about " + " ".join(words[1:5]) + "?"


def main() -> None:
    from irlm.methods.drama.augment import run_augment
    from irlm.methods.drama.config import AugmentConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("strategy")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--n", type=int, default=30)
    a = ap.parse_args()
    cfg = AugmentConfig(strategy=a.strategy, data=a.data, out=a.out, n=a.n, batch_size=2, top_k=6,
                        negatives_from=3, rerank_negatives_from=4, min_sentence_words=3)  # fmt: skip
    run_augment(cfg, generator=FakeTeacher(sleep=a.sleep))


if __name__ == "__main__":
    main()
