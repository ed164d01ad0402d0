"""Training examples: one JSON object per line, {"query", "positives", "negatives", ...provenance}."""

from __future__ import annotations

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
