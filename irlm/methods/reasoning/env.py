"""The RL environment's corpus index, kept current by selective re-embedding (Search-R3, METHODS.md §5).

The policy's weights also embed the documents, so every update moves the corpus embeddings.
Re-encoding the whole corpus per step is unaffordable; each step re-encodes only

- the batch's positives (their rank is the reward),
- the current top-k neighbours of the batch's queries (the documents that can outrank a positive),
- the next slice of a rolling schedule through the whole corpus (so no embedding grows staler than
  ceil(N / slice) steps),

and writes them in place with `DenseIndex.update`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from irlm.index.dense import DenseIndex
from irlm.methods.reasoning.rewards import positive_ranks


class SelectiveIndex:
    def __init__(self, doc_ids: list[str], encode: Callable[[list[str]], np.ndarray], top_k: int = 10,
                 slice_size: int = 64):  # fmt: skip
        """`encode(ids)` embeds documents with the current policy, (len(ids), dim) float32."""
        self.doc_ids, self.encode, self.top_k, self.slice_size = list(doc_ids), encode, top_k, slice_size
        self.cursor = 0
        self.encoded = 0  # documents encoded since construction, the initial full pass included
        first = self._encode(self.doc_ids)
        self.index = DenseIndex(first.shape[1])
        self.index.add(self.doc_ids, first)

    def _encode(self, ids: list[str]) -> np.ndarray:
        self.encoded += len(ids)
        return np.asarray(self.encode(ids), dtype=np.float32)

    def rolling_slice(self) -> list[str]:
        n = len(self.doc_ids)
        take = [self.doc_ids[(self.cursor + i) % n] for i in range(min(self.slice_size, n))]
        self.cursor = (self.cursor + len(take)) % n
        return take

    def refresh(self, query_vectors: np.ndarray, positive_ids: list[str]) -> list[str]:
        """Re-encode what this batch's rewards depend on, plus the next rolling slice; returns the ids."""
        _, neighbours = self.index.search(np.asarray(query_vectors, dtype=np.float32), self.top_k)
        todo = list(dict.fromkeys([*positive_ids, *(d for row in neighbours for d in row), *self.rolling_slice()]))
        self.index.update(todo, self._encode(todo))
        return todo

    def full_refresh(self) -> None:
        self.index.update(self.doc_ids, self._encode(self.doc_ids))

    def ranks(self, query_vectors: np.ndarray, positive_ids: list[str]) -> list[int]:
        """1-based rank of each query's positive among all documents (ties count against it)."""
        return positive_ranks(self.scores(query_vectors), self.index.rows(positive_ids))

    def scores(self, query_vectors: np.ndarray) -> np.ndarray:
        """Cosine of each query against every indexed document, (Q, N)."""
        return np.asarray(query_vectors, dtype=np.float32) @ self.index.vectors.T
