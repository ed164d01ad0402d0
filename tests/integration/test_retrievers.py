"""Retrievers end to end on a toy BEIR folder: every kind yields a Run and survives save/load."""

from __future__ import annotations

import json

import pytest
from conftest import same_run

from irlm.data.beir import load_beir
from irlm.errors import InputError
from irlm.eval.metrics import evaluate
from irlm.index.retrievers import BM25Retriever, DenseRetriever, HybridRetriever, load_retriever


@pytest.fixture
def dataset(toy_beir):
    return load_beir(toy_beir)


@pytest.fixture
def bm25(dataset):
    return BM25Retriever.build(dataset.corpus)


@pytest.fixture(params=["exact", "hnsw"])
def dense(request, dataset, llama_encoder):
    return DenseRetriever.build(dataset.corpus, llama_encoder, backend=request.param)


def test_bm25_retriever_finds_the_judged_docs(dataset, bm25):
    run = bm25.search(dataset.split_queries("test"), k=3)
    assert {q: next(iter(docs)) for q, docs in run.items()} == {"q1": "d2", "q2": "d3", "q3": "d4"}
    assert evaluate(run, dataset.qrels["test"], ["mrr@10"]) == {"mrr@10": 1.0}


def test_dense_retriever_run_shape(dataset, dense):
    queries = dataset.split_queries("test")
    run = dense.search(queries, k=4)
    assert list(run) == list(queries)
    corpus_ids = set(dataset.corpus.ids)
    for docs in run.values():
        assert len(docs) == 4 and set(docs) <= corpus_ids
        scores = list(docs.values())
        assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert dense.index.meta["encoder"]["pooling"] == "last"


def test_hybrid_is_a_subset_of_the_union(dataset, bm25, dense):
    queries = dataset.split_queries("test")
    parts_runs = [bm25.search(queries, k=1000), dense.search(queries, k=1000)]
    for method in ("rrf", "weighted"):
        hybrid = HybridRetriever([bm25, dense], method=method)
        run = hybrid.search(queries, k=3)
        assert list(run) == list(queries)
        for q, docs in run.items():
            assert 0 < len(docs) <= 3
            assert set(docs) <= set(parts_runs[0][q]) | set(parts_runs[1][q])
            scores = list(docs.values())
            assert scores == sorted(scores, reverse=True)
    with pytest.raises(InputError, match="unknown fusion"):
        HybridRetriever([bm25, dense], method="max")


def test_hybrid_rrf_favours_agreement(dataset, bm25):
    queries = dataset.split_queries("test")
    run = HybridRetriever([bm25, bm25], method="rrf").search(queries, k=1)
    assert {q: list(d) for q, d in run.items()} == {"q1": ["d2"], "q2": ["d3"], "q3": ["d4"]}
    assert run["q1"]["d2"] == pytest.approx(2 / 61)


def test_save_load_each_kind(tmp_path, dataset, bm25, dense):
    queries = dataset.split_queries("test")
    hybrid = HybridRetriever([bm25, dense], method="weighted", weights=[0.3, 0.7])
    for name, retriever in {"bm25": bm25, "dense": dense, "hybrid": hybrid}.items():
        before = retriever.search(queries, k=5)
        retriever.save(tmp_path / name)
        loaded = load_retriever(tmp_path / name, device="cpu")
        assert type(loaded) is type(retriever)
        assert json.loads((tmp_path / name / "meta.json").read_text())["kind"] == name
        same_run(loaded.search(queries, k=5), before)
    loaded = load_retriever(tmp_path / "hybrid")
    assert (loaded.method, loaded.weights) == ("weighted", [0.3, 0.7])
    assert [type(p) for p in loaded.parts] == [BM25Retriever, DenseRetriever]


def test_load_retriever_bad_folders(tmp_path):
    with pytest.raises(InputError, match="no meta.json"):
        load_retriever(tmp_path)
    (tmp_path / "meta.json").write_text('{"kind": "colbert"}')
    with pytest.raises(InputError, match="field 'kind'.*colbert"):
        load_retriever(tmp_path)


def test_no_queries_give_an_empty_run(bm25, dense):
    assert bm25.search({}, k=5) == {}
    assert dense.search({}, k=5) == {}
