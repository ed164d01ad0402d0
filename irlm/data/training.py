"""Training examples: one JSON object per line, {"query", "positives", "negatives", ...provenance}."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from irlm.data.beir import iter_jsonl, write_jsonl
from irlm.errors import InputError


@dataclass
class TrainExample:
    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # provenance: qid, doc ids, strategy, teacher ...

    def to_json(self) -> dict:
        return {"query": self.query, "positives": self.positives, "negatives": self.negatives, **self.meta}


def _texts(obj: dict, name: str, path, lineno: int, required: bool) -> list[str]:
    value = obj.get(name, [] if not required else None)
    if value is None or (required and not value):
        raise InputError("is missing or empty", path, lineno, name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError("must be a list of strings", path, lineno, name)
    return value


def read_examples(path: str | Path) -> list[TrainExample]:
    out = []
    for lineno, obj in iter_jsonl(path):
        query = obj.get("query")
        if not isinstance(query, str) or not query.strip():
            raise InputError("is missing or not a non-empty string", path, lineno, "query")
        pos = _texts(obj, "positives", path, lineno, required=True)
        neg = _texts(obj, "negatives", path, lineno, required=False)
        meta = {k: v for k, v in obj.items() if k not in ("query", "positives", "negatives")}
        out.append(TrainExample(query, pos, neg, meta))
    if not out:
        raise InputError("no training examples", path)
    return out


def write_examples(path: str | Path, examples: list[TrainExample]) -> None:
    write_jsonl(path, (e.to_json() for e in examples))


CASINGS = {"upper": str.upper, "title": str.title, "lower": str.lower}


def recase(examples: list[TrainExample], share: float, seed: int = 0) -> list[TrainExample]:
    """A copy in which about `share` of the queries, and independently of the passages, are re-written in upper,
    title or lower case (one drawn per text). The draw is a function of (seed, position), so the same examples
    give the same texts on every run and every process, and a cache keyed by text stays valid."""
    rng = random.Random(seed)
    names = sorted(CASINGS)

    def maybe(text: str) -> str:
        hit, name = rng.random() < share, rng.choice(names)  # two draws per text either way: positions stay aligned
        return CASINGS[name](text) if hit else text

    out = []
    for ex in examples:
        query, pos, neg = maybe(ex.query), [maybe(t) for t in ex.positives], [maybe(t) for t in ex.negatives]
        out.append(TrainExample(query, pos, neg, ex.meta))
    return out


def held_out_qids(data: str, split: str, n: int) -> set[str]:
    """`n` of a dataset's `split` queries held out as DATA-dev: a draw with its own fixed seed, so every
    training seed and every method tunes on the same queries (empty when n is 0)."""
    if not (data and n):
        return set()
    from irlm.data import load_dataset

    return draw_held_out(load_dataset(data).qrels[split], n)


def draw_held_out(qids, n: int) -> set[str]:
    """`n` of `qids` drawn with a fixed seed of their own, whatever the order they come in."""
    qids = sorted(qids)
    random.Random(0).shuffle(qids)
    return set(qids[:n])
