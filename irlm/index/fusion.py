"""Fusion of runs: pure functions over Run dicts."""

from __future__ import annotations

from irlm.errors import InputError
from irlm.types import Run


def rrf(runs: list[Run], k: int = 60, depth: int = 1000) -> Run:
    """Reciprocal rank fusion: sum over runs of 1 / (k + rank). k=60 follows Cormack et al. (2009)."""
    fused: Run = {}
    for run in runs:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda x: -x[1])[:depth]
            out = fused.setdefault(qid, {})
            for rank, (doc, _) in enumerate(ranked, start=1):
                out[doc] = out.get(doc, 0.0) + 1.0 / (k + rank)
    return fused


# the values of OpenSearch's min_max normalisation (neural-search MinMaxScoreNormalizationTechnique): the
# lowest retrieved score stays above the 0 of "not retrieved", and a lone or all-tied hit is 1
LOWEST = 0.001
SINGLE = 1.0


def _minmax(docs: dict[str, float]) -> dict[str, float]:
    """Scores mapped linearly onto [LOWEST, 1]: the top hit is 1 even when it is the only hit or tied with every
    other (a span of 0 would otherwise make it 0, and the run's weight would count for nothing). Linear, not
    OpenSearch's "0 becomes LOWEST", so a score just above the lowest never falls below it."""
    if not docs:
        return {}
    lo, hi = min(docs.values()), max(docs.values())
    if hi == lo:
        return dict.fromkeys(docs, SINGLE)
    return {d: LOWEST + (1 - LOWEST) * (s - lo) / (hi - lo) for d, s in docs.items()}


def weighted(runs: list[Run], weights: list[float]) -> Run:
    """Weighted sum of per-query min-max normalised scores (`_minmax`); a document a run did not retrieve counts
    0 there, below the run's lowest retrieved document."""
    if len(runs) != len(weights):
        raise InputError(f"{len(runs)} runs but {len(weights)} weights")
    fused: Run = {}
    for run, w in zip(runs, weights):
        for qid, docs in run.items():
            out = fused.setdefault(qid, {})
            for doc, s in _minmax(docs).items():
                out[doc] = out.get(doc, 0.0) + w * s
    return fused


def with_bm25(dense: Run, bm25: Run, dense_weight: float) -> Run:
    """A dense run fused with BM25's, weighted, in the order a saved hybrid (BM25 part first) fuses them, so
    its ties break alike and dense_weight 0 ranks as BM25 alone."""
    return weighted([bm25, dense], [1 - dense_weight, dense_weight])


def top_k(run: Run, k: int) -> Run:
    return {q: dict(sorted(d.items(), key=lambda x: -x[1])[:k]) for q, d in run.items()}
