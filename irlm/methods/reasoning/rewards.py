"""Rewards for GRPO on think-then-embed outputs (METHODS.md §4 LREM, §5 Search-R3).

Each reward is a free function of plain numbers or text, so it is tested on its own and the
RL environment only has to supply ranks and token counts. `PRESETS` holds each paper's weights;
`combine` applies them.

Example:
    >>> parts = {"format": format_reward("<think>cold, lemon</think><emb>"),
    ...          "length": length_reward(3), "accuracy": rank_accuracy(10, 100)}
    >>> combine(parts, PRESETS["lrem"])
    1.2
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

THINK_OPEN, THINK_CLOSE, EMB = "<think>", "</think>", "<emb>"

# Whitespace around the special tokens is allowed because tokenizers may decode them with spaces
# (spaces_between_special_tokens); anything else before <think>, between </think> and <emb>, or
# after <emb> breaks the format.
_FORMAT = re.compile(r"\s*<think>(?P<reasoning>.*?)</think>\s*<emb>\s*", re.DOTALL)


def format_reward(text: str) -> float:
    """1.0 when the completion is exactly `<think> reasoning </think><emb>`, else 0.0 (LREM §4 format).

    `text` is the generated completion after the query, decoded with special tokens and cut at EOS.
    The reasoning must hold something other than whitespace and no further special tag, and nothing
    but whitespace may follow `<emb>` (the embedding is read there, so later text is wasted work).

    Example:
        >>> format_reward("<think>lemonade, iced</think><emb>"), format_reward("<think> </think><emb>")
        (1.0, 0.0)
    """
    match = _FORMAT.fullmatch(text)
    if match is None:
        return 0.0
    reasoning = match.group("reasoning")
    if not reasoning.strip() or any(tag in reasoning for tag in (THINK_OPEN, THINK_CLOSE, EMB)):
        return 0.0
    return 1.0


def length_reward(n_tokens: int, budget: int = 16) -> float:
    """1.0 when the reasoning has at most `budget` tokens, else 0.0: LREM's `length(<= 16)` (§4).

    METHODS.md names the term only as a constraint, so it is read as an indicator rather than a
    graded penalty; budget 16 matches LREM's cap of 16 reasoning tokens in the cold start.

    Example:
        >>> length_reward(16), length_reward(17)
        (1.0, 0.0)
    """
    if n_tokens < 0 or budget < 0:
        raise ValueError(f"n_tokens and budget must be >= 0, got {n_tokens} and {budget}")
    return 1.0 if n_tokens <= budget else 0.0


def rank_accuracy(rank: int, n: int) -> float:
    """LREM's accuracy `1 - log(rank) / log(N)` (§4): rank 1-based among the batch's N documents.

    Rank 1 gives 1.0 and rank N gives 0.0; a rank past N (a caller's off-by-one) is clamped to N.

    Example:
        >>> rank_accuracy(1, 100), rank_accuracy(10, 100), rank_accuracy(100, 100)
        (1.0, 0.5, 0.0)
    """
    if rank < 1:
        raise ValueError(f"rank is 1-based, got {rank}")
    if n < 2:
        raise ValueError(f"rank accuracy needs N >= 2 documents (log(1) = 0), got {n}")
    return 1.0 - math.log(min(rank, n)) / math.log(n)


def positive_ranks(scores, positives: Sequence[int]) -> list[int]:
    """1-based rank of each row's positive column among all N columns of `scores` (Q, N).

    Ties count against the positive: every document scoring at least as high as it is ahead of it, so a
    row whose scores are all equal ranks its positive N-th. A policy that collapses every embedding onto one
    point then earns rank accuracy 0, not 1 (the reward-hacking path of counting ties for it).

    Example:
        >>> positive_ranks([[0.9, 0.1, 0.5], [0.2, 0.2, 0.2]], [0, 1])
        [1, 3]
    """
    scores = np.asarray(scores)
    own = scores[np.arange(len(scores)), np.asarray(positives, dtype=np.int64)]  # (Q,)
    return (scores >= own[:, None]).sum(axis=1).tolist()


def _dcg(ranks: Sequence[float], gains: Sequence[float], k: int | None) -> float:
    return sum(g / math.log2(r + 1) for r, g in zip(ranks, gains) if k is None or r <= k)


def dcg_reward(ranks: Sequence[float], gains: Sequence[float] | None = None, k: int | None = None) -> float:
    """Search-R3's DCG-scaled reward (§5): DCG of the relevant documents' ranks over the ideal DCG.

    `ranks[i]` is the 1-based rank of relevant document i under the embedding the sampled reasoning
    led to (`math.inf` if it was not retrieved), `gains[i]` its graded relevance (default 1 each).
    DCG = sum_i gain_i / log2(rank_i + 1), counting only ranks <= k when k is given; the ideal puts
    the gains in decreasing order at ranks 1, 2, ... Gains are linear (trec_eval's nDCG), so the
    reward equals nDCG(@k) of the ranking and lies in [0, 1]. METHODS.md says only "graded by DCG";
    normalising by the ideal keeps queries with many or few relevant documents on one scale, which
    GRPO's per-group normalisation does not need but logging and mixing with other rewards do.

    Example:
        >>> dcg_reward([1]), round(dcg_reward([3]), 4)
        (1.0, 0.5)
    """
    if not ranks:
        raise ValueError("dcg_reward needs at least one relevant document")
    gains = [1.0] * len(ranks) if gains is None else list(gains)
    if len(gains) != len(ranks):
        raise ValueError(f"got {len(ranks)} ranks but {len(gains)} gains")
    finite = [r for r in ranks if r != math.inf]
    if any(r < 1 for r in ranks) or len(set(finite)) != len(finite):
        raise ValueError(f"ranks must be distinct and 1-based, got {list(ranks)}")
    if any(g < 0 for g in gains) or not any(g > 0 for g in gains):
        raise ValueError(f"gains must be >= 0 with at least one > 0, got {gains}")
    ideal = sorted(gains, reverse=True)
    return _dcg(ranks, gains, k) / _dcg(range(1, len(ideal) + 1), ideal, k)


# Weights of each paper's reward. LREM (§4): 0.5 * format + 0.2 * length(<= 16) + 1.0 * accuracy.
# Search-R3 (§5) names only the DCG-scaled retrieval reward; a malformed output has no <emb> to
# read an embedding from, so the RL environment gives it dcg = 0 rather than a separate term.
PRESETS: dict[str, dict[str, float]] = {
    "lrem": {"format": 0.5, "length": 0.2, "accuracy": 1.0},
    "searchr3": {"dcg": 1.0},
}


def combine(parts: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted sum of named rewards; every weighted name must be present, so none is silently 0.

    Example:
        >>> combine({"dcg": 0.5}, PRESETS["searchr3"])
        0.5
    """
    missing = sorted(set(weights) - set(parts))
    if missing:
        raise KeyError(f"rewards missing for weighted terms: {missing}")
    return sum(w * parts[name] for name, w in weights.items())
