"""Compact dense indexes (FAISS int8 scalar quantisation, binary sign bits + float rescoring): recall against
exact search, bytes per vector, save / load, edits, and the manifest check on their files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from irlm.errors import InputError
from irlm.index.dense import DenseIndex

DIM = 64
COMPACT = ["int8", "binary"]


def _unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 2000), _unit(rng, 100)
    return [f"d{i}" for i in range(len(vectors))], vectors, queries


def _recall(index, ids, vectors, queries, k=10):
    exact = DenseIndex(DIM)
    exact.add(ids, vectors)
    truth = exact.search(queries, k)[1]
    got = index.search(queries, k)[1]
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, got, strict=True)])


def _built(backend, ids, vectors, **kw):
    index = DenseIndex(DIM, backend, **kw)
    index.add(ids, vectors)
    return index


def test_int8_ranks_close_to_exact(data):
    ids, vectors, queries = data
    index = _built("int8", ids, vectors)
    assert _recall(index, ids, vectors, queries) >= 0.9
    scores = index.search(queries, 10)[0]  # approximate inner products, not another scale
    exact = queries @ vectors.T
    np.testing.assert_allclose(scores[:, 0], np.sort(exact, axis=1)[:, -1], atol=0.05)


def test_binary_rescoring_beats_binary_alone(data):
    ids, vectors, queries = data
    # isotropic random data is binary's worst case (measured: recall@10 0.16 alone, 0.42 at x4, 0.63 at x10)
    alone, x4, x10 = (_recall(_built("binary", ids, vectors, rescore=r), ids, vectors, queries) for r in (0, 4, 10))
    assert alone <= x4 <= x10
    assert x10 >= 0.5 and x10 >= alone + 0.3


def test_binary_rescored_scores_are_float_inner_products(data):
    ids, vectors, queries = data
    index = _built("binary", ids, vectors, rescore=4)
    scores, got = index.search(queries[:5], 10)
    pos = {d: n for n, d in enumerate(ids)}
    for q, row_s, row_i in zip(queries[:5], scores, got, strict=True):
        np.testing.assert_allclose(row_s, vectors[[pos[d] for d in row_i]] @ q, atol=1e-5)
        assert list(row_s) == sorted(row_s, reverse=True)
    alone_s, _ = _built("binary", ids, vectors, rescore=0).search(queries[:5], 10)
    assert np.all((alone_s <= DIM) & (alone_s >= -DIM)) and np.all(alone_s % 2 == 0)  # dim - 2 * hamming


def test_bytes_per_vector(data, tmp_path):
    ids, vectors, _ = data
    assert _built("exact", ids, vectors).bytes_per_doc() == 4 * DIM
    assert _built("int8", ids, vectors).bytes_per_doc() == DIM
    assert _built("binary", ids, vectors).bytes_per_doc() == DIM / 8
    for backend, per_doc in (("int8", DIM), ("binary", DIM // 8)):  # the saved codes: that, plus a header
        _built(backend, ids, vectors).save(tmp_path / backend)
        size = (tmp_path / backend / "faiss.npy").stat().st_size
        assert len(ids) * per_doc <= size <= len(ids) * per_doc + 4096


@pytest.mark.parametrize("backend", COMPACT)
def test_save_load_round_trip_equal_results(tmp_path, data, backend):
    ids, vectors, queries = data
    index = _built(backend, ids, vectors, rescore=3, meta={"encoder": {"model": "x"}})
    before = index.search(queries, 20)
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert (loaded.backend, loaded.dim, loaded.ids, loaded.meta) == (backend, DIM, ids, {"encoder": {"model": "x"}})
    assert loaded._faiss is not None  # codes came from the file, not rebuilt
    assert isinstance(loaded.vectors, np.memmap)  # the float vectors stay on disk
    if backend == "binary":
        assert loaded.rescore == 3
    after = loaded.search(queries, 20)
    assert after[1] == before[1]
    np.testing.assert_array_equal(after[0], before[0])
    assert loaded.bytes_per_doc() == index.bytes_per_doc()


@pytest.mark.parametrize("backend", COMPACT)
def test_add_update_remove(tmp_path, backend):
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 50, 8)
    ids = [f"d{i}" for i in range(50)]
    index = DenseIndex(8, backend)
    index.add(ids, vectors)
    index.save(tmp_path / "idx")
    index = DenseIndex.load(tmp_path / "idx")  # edits on a memory-mapped, loaded index
    query = vectors[7:8]
    assert index.search(query, 1)[1] == [["d7"]]
    index.remove(["d7"])
    assert "d7" not in index.search(query, 10)[1][0] and len(index) == 49
    index.add(["new"], query * 2)  # the same direction, twice the length: first for any backend
    assert index.search(query, 1)[1] == [["new"]]
    index.update(["d3"], query * 3)
    assert index.search(query, 2)[1] == [["d3", "new"]]
    index.save(tmp_path / "idx")  # over the folder it is memory-mapped from
    assert DenseIndex.load(tmp_path / "idx").search(query, 2)[1] == [["d3", "new"]]


@pytest.mark.parametrize("backend", COMPACT)
def test_reindex_from_exact_embeddings(tmp_path, data, backend):
    """What `irlm index --embeddings DIR --backend ...` does."""
    ids, vectors, queries = data
    _built("exact", ids, vectors, meta={"encoder": {"model": "x"}}).save(tmp_path / "emb")
    src = DenseIndex.load(tmp_path / "emb")
    dst = DenseIndex(src.dim, backend, meta=src.meta)
    dst.add(src.ids, src.vectors)
    dst.save(tmp_path / backend)
    assert DenseIndex.load(tmp_path / backend).meta == {"encoder": {"model": "x"}}


def test_binary_needs_whole_bytes():
    with pytest.raises(InputError, match="multiple of 8"):
        DenseIndex(12, "binary")
    with pytest.raises(InputError, match="rescore"):
        DenseIndex(8, "binary", rescore=-1)


def _saved(tmp_path, backend, data):
    ids, vectors, _ = data
    folder = tmp_path / backend
    _built(backend, ids[:100], vectors[:100]).save(folder)
    return folder


@pytest.mark.parametrize("backend", COMPACT)
def test_altered_codes_are_damage(tmp_path, data, backend):
    folder = _saved(tmp_path, backend, data)
    path = folder / "faiss.npy"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="faiss.npy: checksum differs"):
        DenseIndex.load(folder)


@pytest.mark.parametrize("backend", COMPACT)
def test_missing_codes_are_damage(tmp_path, data, backend):
    folder = _saved(tmp_path, backend, data)
    (folder / "faiss.npy").unlink()
    with pytest.raises(InputError, match=f"index {folder} is damaged: faiss.npy: missing"):
        DenseIndex.load(folder)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["faiss_sha256"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="meta.json: no 'faiss_sha256'"):
        DenseIndex.load(folder)


@pytest.mark.parametrize("backend", COMPACT)
def test_truncated_vectors_are_damage(tmp_path, data, backend):
    folder = _saved(tmp_path, backend, data)
    path = folder / "vectors.npy"
    path.write_bytes(path.read_bytes()[: -DIM * 4 * 3])
    with pytest.raises(InputError, match=f"index {folder} is damaged: vectors.npy"):
        DenseIndex.load(folder)


def test_swapped_codes_are_damage(tmp_path, data):
    """int8 codes under a binary meta.json (checksum rewritten to match): the FAISS kind gives it away."""
    int8, binary = _saved(tmp_path, "int8", data), _saved(tmp_path, "binary", data)
    (binary / "faiss.npy").write_bytes((int8 / "faiss.npy").read_bytes())
    meta = json.loads((binary / "meta.json").read_text())
    meta["faiss_sha256"] = json.loads((int8 / "meta.json").read_text())["faiss_sha256"]
    (binary / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="faiss.npy: a IndexScalarQuantizer, but meta.json's backend is 'binary'"):
        DenseIndex.load(binary)
