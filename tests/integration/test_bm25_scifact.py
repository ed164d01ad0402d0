"""BM25 on real SciFact (from $IRLM_DATA) reproduces the issue's number: nDCG@10 0.676 +- 0.01."""

from __future__ import annotations

import pytest

from irlm.data import load_dataset
from irlm.eval.metrics import evaluate
from irlm.index.retrievers import BM25Retriever


def test_bm25_scifact_ndcg():
    ds = load_dataset("scifact", download=False)
    queries = ds.split_queries("test")
    assert len(queries) == 300
    run = BM25Retriever.build(ds.corpus).search(queries, k=100)
    scores = evaluate(run, ds.qrels["test"], ["ndcg@10", "recall@100"])
    assert scores["ndcg@10"] == pytest.approx(0.676, abs=0.01)
    assert scores["recall@100"] == pytest.approx(0.913, abs=0.01)
