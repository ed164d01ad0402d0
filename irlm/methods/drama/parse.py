"""Reading LLM output: rankings, queries and triplets. Pure functions; None means invalid.

Example:
    >>> parse_ranking("Sure! [3] > [1] > [3] > [9]", 4)
    [2, 0, 1, 3]
"""

from __future__ import annotations

import json
import re

_ID = re.compile(r"\[\s*(\d+)\s*\]")
_BARE = re.compile(r"(?<![\w.])(\d+)(?![\w.])")
_PREFIX = re.compile(r"^\s*(?:[-*#>\d.)]+\s*)?(?:(?:search\s+)?query\s*\d*\s*[:\-]\s*)?", re.IGNORECASE)
_QUOTES = "\"'`“”‘’"


def parse_ranking(text: str, n: int) -> list[int] | None:
    """0-based order of n candidates from output like `[3] > [1] > [7]`.

    Chatter around the ids is ignored, repeats keep their first place, ids outside 1..n are dropped,
    and candidates the model left out follow in their original order. Bracketed ids are preferred;
    bare numbers joined by `>` count when there are none. No usable id at all is invalid (None).
    """
    found = _ID.findall(text)
    if not found and ">" in text:
        found = _BARE.findall(text)
    order: list[int] = []
    for raw in found:
        i = int(raw) - 1
        if 0 <= i < n and i not in order:
            order.append(i)
    if not order:
        return None
    return order + [i for i in range(n) if i not in order]


def parse_query(text: str, max_words: int = 40) -> str | None:
    """The first non-empty line, without list markers, a `Query:` label or quotes; None if unusable."""
    for line in text.splitlines():
        line = _PREFIX.sub("", line).strip().strip(_QUOTES).strip()
        if line:
            break
    else:
        return None
    words = line.lower().split()
    if len(line) < 3 or len(words) > max_words or not re.search(r"[A-Za-z0-9]", line) or line.endswith(":"):
        return None  # too short, too long, no content, or a preamble ("The passage is:")
    if _loops(words):
        return None
    return line


def _loops(words: list[str], n: int = 3) -> bool:
    """A repeated word n-gram: the degenerate loop small models fall into."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def _labelled(text: str) -> dict[str, str]:
    """`Query: ...` / `Positive: ...` / `Negative: ...` blocks, each running until the next label."""
    labels = re.compile(r"^\W*(query|positive(?: passage)?|negative(?: passage)?)\W*:\s*", re.I | re.M)
    parts = labels.split(text)
    out = {}
    for key, body in zip(parts[1::2], parts[2::2]):
        out.setdefault(key.split()[0].lower(), body.strip())
    return out


def _json_object(text: str) -> dict:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return {}
    try:
        obj = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return {}
    return {str(k).lower(): v for k, v in obj.items()} if isinstance(obj, dict) else {}


def parse_triplet(text: str) -> tuple[str, str, str] | None:
    """(query, positive, negative) from a JSON object or labelled lines; None if any part is missing."""
    obj = _json_object(text) or _labelled(text)
    parts = [obj.get(k) for k in ("query", "positive", "negative")]
    if not all(isinstance(p, str) and p.strip() for p in parts):
        return None
    query, pos, neg = (p.strip().strip(_QUOTES).strip() for p in parts)
    if pos == neg or len(query) < 3:
        return None
    return query, pos, neg
