"""BM25 on real SciFact (from $IRLM_DATA) reproduces nDCG@10 0.6762 and R@100 0.9127.

BM25 is deterministic: a tolerance of 5e-4 catches a changed tokenizer, stemmer or k1/b."""

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
    assert scores["ndcg@10"] == pytest.approx(0.6762, abs=5e-4)
    assert scores["recall@100"] == pytest.approx(0.9127, abs=5e-4)
