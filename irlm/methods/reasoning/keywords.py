"""Condense a teacher's free reasoning into LREM's keyword list (METHODS.md §4, Data).

LREM keeps at most 16 keywords, drops duplicates and words already in the query: the query is in
the prompt anyway, so repeating it spends the short reasoning budget on nothing new.
"""

from __future__ import annotations

import re

from bm25s.stopwords import STOPWORDS_EN_PLUS

# Words with inner hyphens or apostrophes stay whole ("e-commerce", "don't"); a possessive "'s"
# is cut so "user's" and "user" count as one word.
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS)


def _words(text: str) -> list[str]:
    return [re.sub(r"['’]s$", "", w, flags=re.IGNORECASE) for w in _WORD.findall(text)]


def condense(reasoning: str, query: str, max_keywords: int = 16) -> list[str]:
    """Content words of `reasoning` in order of first appearance, as written there.

    Dropped: English stopwords (bm25s's list), single characters, words of the query, and repeats;
    all comparisons ignore case and matching is exact (no stemming), so "drinks" survives a query
    holding "drink". At most `max_keywords` (LREM: 16) are kept.

    Example:
        >>> condense("The user wants a cold drink: lemonade, iced tea, Lemonade.", "refreshing drink")
        ['user', 'wants', 'cold', 'lemonade', 'iced', 'tea']
    """
    if max_keywords < 0:
        raise ValueError(f"max_keywords must be >= 0, got {max_keywords}")
    seen = {w.lower() for w in _words(query)} | _STOPWORDS
    keywords = []
    for word in _words(reasoning):
        if len(keywords) >= max_keywords:
            break
        key = word.lower()
        if len(word) > 1 and key not in seen:
            seen.add(key)
            keywords.append(word)
    return keywords


def render(keywords: list[str]) -> str:
    """The reasoning text between <think> and </think>: keywords joined by ", " (LREM's format).

    Example:
        >>> render(["lemonade", "iced"])
        'lemonade, iced'
    """
    return ", ".join(keywords)
