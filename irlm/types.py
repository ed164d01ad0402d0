"""The few shapes every part of irlm speaks in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

Run = dict[str, dict[str, float]]  # qid -> {docid: score}
Qrels = dict[str, dict[str, int]]  # qid -> {docid: graded relevance}
Queries = dict[str, str]  # qid -> text


@dataclass
class Document:
    id: str
    text: str
    title: str = ""

    def full_text(self, sep: str = " ") -> str:
        """Title and body as one string, the BEIR convention for indexing."""
        return f"{self.title}{sep}{self.text}" if self.title else self.text


@dataclass
class Corpus:
    """Documents in file order; `ids` and `texts()` line up position by position."""

    docs: list[Document] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.docs]

    def texts(self, sep: str = " ") -> list[str]:
        return [d.full_text(sep) for d in self.docs]


@dataclass
class Dataset:
    name: str
    corpus: Corpus
    queries: Queries
    qrels: dict[str, Qrels]  # split -> qrels

    def split_queries(self, split: str) -> Queries:
        """The queries judged in `split`, in file order."""
        judged = self.qrels[split]
        return {qid: text for qid, text in self.queries.items() if qid in judged}

    def first_queries(self, split: str, limit: int = 0) -> tuple[Queries, Qrels]:
        """The split's first `limit` judged queries in file order (0 = all) and their qrels: what `irlm eval`,
        `irlm compare` and eval stages score with a limit, so their numbers agree."""
        queries = self.split_queries(split)
        if not limit:
            return queries, self.qrels[split]
        queries = dict(list(queries.items())[:limit])
        return queries, {q: judged for q, judged in self.qrels[split].items() if q in queries}


class Encoder(Protocol):
    def encode_queries(self, queries: list[str], **kw) -> np.ndarray: ...
    def encode_corpus(self, docs: list[str], **kw) -> np.ndarray: ...


@runtime_checkable
class Retriever(Protocol):
    """What every saved system is, whatever its kind (BM25, dense, hybrid, Self-Retrieval, reasoning), so
    evaluation, fusion, serving and the CLI are written once and never probe private attributes.

    kind: the name its manifest records ("bm25", "dense", ...); len(): the documents it searches;
    encoder: the dense Encoder that embeds its queries, or None where there is none (BM25, Self-Retrieval).

    Example:
        >>> system = load_retriever("runs/scifact-bm25")  # doctest: +SKIP
        >>> system.kind, len(system), system.encoder  # doctest: +SKIP
        ('bm25', 5183, None)
    """

    kind: str

    @property
    def encoder(self) -> Encoder | None: ...

    def search(self, queries: Queries, k: int = 100) -> Run: ...

    def __len__(self) -> int: ...
