"""A keyword teacher without an LLM: pseudo-relevance feedback from the retrieval data itself.

The LLM teacher (train.make_reasoning) writes free reasoning that `keywords.condense` cuts to keywords.
This teacher writes the keywords directly: the most salient words of a query's feedback documents, by
BM25 term weight. Two sources of feedback:

- `prf-bm25`: BM25's top `prf_docs` documents for the query (classic pseudo-relevance feedback, no
  labels used);
- `prf-positive`: the query's judged positive (train queries only: it reads the qrels).

A word's weight is its BM25 term weight summed over the feedback documents,
idf(w) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl)), with idf over the whole corpus (Lucene's
log(1 + (N - df + 0.5) / (df + 0.5))) and pyserini's k1 0.9, b 0.4. Candidates are the words
`condense` would keep from the documents (no stopwords, no single characters, none of the query's
words, compared ignoring case, no stemming) that hold a letter (SciFact's salient "441" or "1992-1997" say
little about a topic), written as they first appear; the `max_keywords`
heaviest are kept, heaviest first (ties: first appearance), since the reasoning is cut at 16 tokens.
Deterministic: no sampling anywhere.

    irlm train reasoning --stage data --config recipes/reasoning-scifact-tiny.yaml --set teacher=prf-bm25
"""

from __future__ import annotations

import math
from collections import Counter

from irlm.errors import InputError
from irlm.methods.reasoning.keywords import _STOPWORDS, _words

PRF_TEACHERS = ("prf-bm25", "prf-positive")
PRF_VERSION = "prf-v1"  # the prompt_version of the rows this teacher writes: the weighting, not a prompt
K1, B = 0.9, 0.4


def is_prf(teacher: str) -> bool:
    return teacher in PRF_TEACHERS


class PRFTeacher:
    """Salient words of each query's feedback documents. `corpus` maps document id to its text."""

    def __init__(self, corpus: dict[str, str], source: str = "prf-bm25", depth: int = 3, max_keywords: int = 16):
        if source not in PRF_TEACHERS:
            raise InputError(f"PRF teacher must be one of {', '.join(PRF_TEACHERS)}, not '{source}'", field="teacher")
        if depth < 1:
            raise InputError(f"prf_docs must be at least 1, got {depth}", field="prf_docs")
        self.corpus, self.source, self.depth, self.max_keywords = corpus, source, depth, max_keywords
        self.tokens = {i: [w.lower() for w in _words(t)] for i, t in corpus.items()}
        df = Counter(w for toks in self.tokens.values() for w in set(toks))
        n = len(corpus)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.avgdl = sum(map(len, self.tokens.values())) / max(1, n)
        self._bm25 = None

    def feedback(self, query_id: str, query: str, positive_id: str | None = None) -> list[str]:
        """The documents the keywords come from: the positive, or BM25's top `depth` for the query."""
        if self.source == "prf-positive":
            if positive_id not in self.corpus:
                raise InputError(f"query {query_id}: positive '{positive_id}' is not in the corpus")
            return [positive_id]
        if self._bm25 is None:
            from irlm.index import BM25Index

            self._bm25 = BM25Index(k1=K1, b=B)
            self._bm25.add(list(self.corpus), list(self.corpus.values()))
            self._bm25.build(progress=False)
        return list(self._bm25.search({query_id: query}, k=self.depth).get(query_id, {}))

    def weights(self, doc_ids: list[str], query: str) -> dict[str, float]:
        """Candidate words (as first written) -> summed BM25 term weight over `doc_ids`, in order of appearance."""
        skip = {w.lower() for w in _words(query)} | _STOPWORDS
        surface: dict[str, str] = {}
        total: dict[str, float] = {}
        for doc in doc_ids:
            toks = self.tokens[doc]
            norm = K1 * (1 - B + B * len(toks) / self.avgdl)
            for word in _words(self.corpus[doc]):
                key = word.lower()
                if len(word) > 1 and key not in skip and any(c.isalpha() for c in word):
                    surface.setdefault(key, word)
            for key, tf in Counter(toks).items():
                if key in surface:
                    total[key] = total.get(key, 0.0) + self.idf[key] * tf * (K1 + 1) / (tf + norm)
        return {surface[k]: total[k] for k in surface}

    def keywords(self, query_id: str, query: str, positive_id: str | None = None) -> tuple[list[str], dict, list]:
        """(keywords heaviest first, their weights, the feedback document ids)."""
        docs = self.feedback(query_id, query, positive_id)
        w = self.weights(docs, query)
        order = {word: n for n, word in enumerate(w)}
        kept = sorted(w, key=lambda word: (-w[word], order[word]))[: self.max_keywords]
        return kept, {k: round(w[k], 4) for k in kept}, docs
