"""DenseIndex: chunked exact search equals brute force; FAISS flat equals exact; HNSW recall; edits; files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from irlm.errors import InputError
from irlm.index.dense import DenseIndex, exact_topk

DIM = 16


def _unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 50), _unit(rng, 9)
    ids = [f"doc{i}" for i in range(50)]
    return ids, vectors, queries


def _brute(queries, vectors, k):
    scores = queries @ vectors.T  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("chunk", [7, 1, 50, 65536])
@pytest.mark.parametrize("k", [1, 10, 50, 80])
def test_exact_topk_chunked_equals_brute_force(data, chunk, k):
    _, vectors, queries = data
    scores, idx = exact_topk(queries, vectors, k, chunk=chunk)
    ref_s, ref_i = _brute(queries, vectors, k)
    assert scores.shape == idx.shape == (len(queries), min(k, len(vectors)))
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-6)


def test_exact_search_ids_and_scores_match_brute_force(data):
    ids, vectors, queries = data
    index = DenseIndex(DIM, "exact", chunk=7)
    index.add(ids, vectors)
    scores, got = index.search(queries, k=10)
    ref_s, ref_i = _brute(queries, vectors, 10)
    assert got == [[ids[j] for j in row] for row in ref_i]
    np.testing.assert_allclose(scores, ref_s, atol=1e-6)


def test_search_run_matches_search(data):
    ids, vectors, queries = data
    index = DenseIndex(DIM, chunk=7)
    index.add(ids, vectors)
    qids = [f"q{i}" for i in range(len(queries))]
    run = index.search_run(qids, queries, k=5, batch=4)  # batches of 4 over 9 queries
    scores, got = index.search(queries, k=5)
    assert list(run) == qids
    for n, qid in enumerate(qids):
        assert list(run[qid]) == got[n]
        np.testing.assert_allclose(list(run[qid].values()), scores[n], atol=1e-6)


def test_flat_faiss_equals_exact(data):
    ids, vectors, queries = data
    exact, flat = DenseIndex(DIM, "exact", chunk=7), DenseIndex(DIM, "flat")
    exact.add(ids, vectors)
    flat.add(ids, vectors)
    s_e, i_e = exact.search(queries, k=10)
    s_f, i_f = flat.search(queries, k=10)
    assert i_f == i_e
    np.testing.assert_allclose(s_f, s_e, atol=1e-5)


def test_hnsw_recall_at_1():
    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng, 200), _unit(rng, 200)
    ids = [str(i) for i in range(200)]
    exact, hnsw = DenseIndex(DIM, "exact"), DenseIndex(DIM, "hnsw")
    exact.add(ids, vectors)
    hnsw.add(ids, vectors)
    _, top_e = exact.search(queries, k=1)
    _, top_h = hnsw.search(queries, k=1)
    recall = np.mean([a[0] == b[0] for a, b in zip(top_e, top_h, strict=True)])
    assert recall >= 0.95


@pytest.mark.parametrize("backend", ["exact", "flat", "hnsw"])
def test_add_update_remove(backend):
    index = DenseIndex(2, backend)
    index.add(["a", "b", "c"], np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32))
    query = np.array([[1, 0.2]], dtype=np.float32)
    assert index.search(query, k=3)[1] == [["a", "b", "c"]]
    index.update(["c"], np.array([[2, 0]], dtype=np.float32))  # c now beats a
    scores, got = index.search(query, k=3)
    assert got == [["c", "a", "b"]]
    np.testing.assert_allclose(scores, [[2.0, 1.0, 0.2]], atol=1e-6)
    index.remove(["a", "zzz"])  # unknown ids are ignored
    assert len(index) == 2 and index.ids == ["b", "c"]
    assert index.search(query, k=3)[1] == [["c", "b"]]
    index.add(["a"], np.array([[0.5, 0]], dtype=np.float32))  # a removed id may come back
    assert index.search(query, k=3)[1] == [["c", "a", "b"]]
    assert index.search(query, k=1)[1] == [["c"]]


def test_add_duplicate_raises():
    index = DenseIndex(2)
    index.add(["a"], np.ones((1, 2)))
    with pytest.raises(InputError, match="'a' is already in the index"):
        index.add(["b", "a"], np.ones((2, 2)))
    with pytest.raises(InputError, match="'c'"):
        index.add(["c", "c"], np.ones((2, 2)))
    assert index.ids == ["a"] and index.vectors.shape == (1, 2)  # failed adds change nothing


def test_update_unknown_and_bad_shape_raise():
    index = DenseIndex(2)
    index.add(["a"], np.ones((1, 2)))
    with pytest.raises(InputError, match="unknown id 'b'"):
        index.update(["b"], np.ones((1, 2)))
    with pytest.raises(InputError, match="dim 2"):
        index.add(["b"], np.ones((1, 3)))
    with pytest.raises(InputError, match="backend"):
        DenseIndex(2, "ivf")


def test_empty_index_search():
    scores, ids = DenseIndex(4).search(np.ones((2, 4)), k=5)
    assert scores.shape == (2, 0) and ids == [[], []]


@pytest.mark.parametrize("backend", ["exact", "flat", "hnsw", "int8", "binary"])
def test_save_load_round_trip(tmp_path, data, backend):
    ids, vectors, queries = data
    index = DenseIndex(DIM, backend, meta={"encoder": {"model": "x", "pooling": "mean"}})
    index.add(ids, vectors)
    before = index.search(queries, k=10)
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert (loaded.backend, loaded.dim, loaded.ids) == (backend, DIM, ids)
    assert loaded.meta == {"encoder": {"model": "x", "pooling": "mean"}}
    np.testing.assert_array_equal(loaded.vectors, vectors)
    after = loaded.search(queries, k=10)
    assert after[1] == before[1]
    np.testing.assert_array_equal(after[0], before[0])
    loaded.add(["new"], np.ones((1, DIM), np.float32))  # a loaded index is still editable
    assert loaded.search(np.ones((1, DIM)), k=1)[1] == [["new"]]


@pytest.mark.parametrize("backend", ["exact", "hnsw", "int8", "binary"])
def test_files_are_npy_and_json_without_pickle(tmp_path, data, backend):
    ids, vectors, _ = data
    index = DenseIndex(DIM, backend)
    index.add(ids, vectors)
    index.save(tmp_path / "idx")
    files = sorted(os.listdir(tmp_path / "idx"))
    assert files  # something was written
    assert {os.path.splitext(f)[1] for f in files} <= {".npy", ".json"}
    for name in files:
        path = tmp_path / "idx" / name
        if name.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
            assert arr.dtype != object
        else:
            json.loads(path.read_text())
    assert os.listdir(tmp_path) == ["idx"]  # no temp folders left behind


def test_save_replaces_existing_index(tmp_path, data):
    ids, vectors, _ = data
    index = DenseIndex(DIM)
    index.add(ids, vectors)
    index.save(tmp_path / "idx")
    index.remove(ids[10:])
    index.save(tmp_path / "idx")
    assert DenseIndex.load(tmp_path / "idx").ids == ids[:10]
    assert os.listdir(tmp_path) == ["idx"]
