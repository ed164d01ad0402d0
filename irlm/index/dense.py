"""Dense index: exact (chunked matmul) or FAISS flat / HNSW / int8 / binary, with add / remove / update / save / load.

The float32 matrix is the source of truth; a FAISS structure is rebuilt lazily after edits.
Files: vectors.npy (no pickle), ids.json, meta.json; HNSW graphs and compact codes as faiss bytes in a .npy.

Compact backends, both FAISS:
- int8: `IndexScalarQuantizer` QT_8bit (per-dimension min/max trained on the vectors), dim bytes per document,
  searched with the float query against the decoded codes.
- binary: `IndexLSH` without rotation or trained thresholds, i.e. the sign bit of each dimension (dim/8 bytes
  per document), searched by Hamming distance; the top `rescore * k` candidates are then rescored with the
  float vectors (rescore=0: Hamming order alone, scored dim - 2 * hamming, the inner product of the signs).
A loaded int8 or binary index keeps vectors.npy memory-mapped: only the codes are read into memory, and
binary rescoring touches the float rows of its candidates alone.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irlm.data.beir import validate_ids
from irlm.errors import InputError
from irlm.index.check import check_ids, damaged, digest, load_array, read_json, read_meta
from irlm.options import BACKENDS  # one list for the CLI checks and the index
from irlm.types import Run
from irlm.utils import atomic_path


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 65536):
    """Inner-product top-k over `vectors`, one chunk at a time so memory stays bounded.

    queries (Q, D), vectors (N, D) -> scores (Q, k'), indices (Q, k') with k' = min(k, N).
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    k = min(k, len(vectors))
    best_s = torch.full((len(q), k), -torch.inf)  # (Q, k)
    best_i = torch.zeros((len(q), k), dtype=torch.long)
    for start in range(0, len(vectors), chunk):
        block = torch.from_numpy(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
        scores = q @ block.T  # (Q, C)
        s, i = scores.topk(min(k, scores.shape[1]), dim=1)
        merged_s = torch.cat([best_s, s], dim=1)
        merged_i = torch.cat([best_i, i + start], dim=1)
        best_s, pos = merged_s.topk(k, dim=1)
        best_i = merged_i.gather(1, pos)
    return best_s.numpy(), best_i.numpy()


class DenseIndex:
    """Vectors with string ids. Scores are inner products (cosine when vectors are normalised).

    Example:
        >>> idx = DenseIndex(dim=2)
        >>> idx.add(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
        >>> idx.search(np.array([[1, 0.1]], dtype=np.float32), k=1)[1]
        [['a']]
    """

    def __init__(self, dim: int, backend: str = "exact", chunk: int = 65536, hnsw_m: int = 32,
                 ef_search: int = 128, meta: dict | None = None, rescore: int = 10):  # fmt: skip
        if backend not in BACKENDS:
            raise InputError(f"unknown index backend '{backend}'; choose from {', '.join(BACKENDS)}")
        self.dim, self.backend, self.chunk = dim, backend, chunk
        self.hnsw_m, self.ef_search = hnsw_m, ef_search  # M=32 / ef=128: FAISS' usual recall-speed balance
        if backend == "binary" and dim % 8:
            raise InputError(f"the binary backend packs 8 dimensions a byte; dim {dim} is not a multiple of 8")
        if rescore < 0:
            raise InputError(f"rescore must be at least 0, got {rescore}")
        self.rescore = rescore  # binary: float-rescore the top rescore * k Hamming candidates (0: none)
        self.meta = meta or {}  # e.g. the encoder config, so a loaded index can embed its own queries
        self.ids: list[str] = []
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self._pos: dict[str, int] = {}
        self._faiss = None

    def __len__(self) -> int:
        return len(self.ids)

    def _check(self, ids: list[str], vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise InputError(f"expected {len(ids)} vectors of dim {self.dim}, got shape {vectors.shape}")
        return vectors

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        validate_ids(ids)  # the id rule of the BEIR reader: every id must round-trip through a TREC file
        vectors = self._check(ids, vectors)
        dup = next((i for i in ids if i in self._pos), None)
        if dup is None and len(set(ids)) != len(ids):
            dup = next(i for i, n in Counter(ids).items() if n > 1)
        if dup is not None:
            raise InputError(f"id '{dup}' is already in the index; use update() to replace it")
        self._pos.update({doc_id: len(self.ids) + n for n, doc_id in enumerate(ids)})
        self.ids.extend(ids)
        self.vectors = np.concatenate([self.vectors, vectors])
        self._faiss = None

    def update(self, ids: list[str], vectors: np.ndarray) -> None:
        """Replace the vectors of existing ids in place (the RL environment's selective re-embedding)."""
        vectors = self._check(ids, vectors)
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise InputError(f"cannot update unknown id '{missing[0]}'")
        if not self.vectors.flags.writeable:  # memory-mapped from a loaded compact index: edit a copy
            self.vectors = np.array(self.vectors)
        self.vectors[[self._pos[i] for i in ids]] = vectors
        self._faiss = None

    def rows(self, ids: list[str]) -> list[int]:
        """Row of each id in `vectors`."""
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise InputError(f"unknown id '{missing[0]}'")
        return [self._pos[i] for i in ids]

    def remove(self, ids: list[str]) -> None:
        gone = set(ids)
        keep = [n for n, i in enumerate(self.ids) if i not in gone]
        self.ids = [self.ids[n] for n in keep]
        self.vectors = self.vectors[keep]
        self._pos = {doc_id: n for n, doc_id in enumerate(self.ids)}
        self._faiss = None

    def copy(self) -> DenseIndex:
        """Another index of the same vectors and settings, to edit while searches go on reading this one. The
        vectors are shared read-only (copy on write): update() copies them first, add() and remove() make new ones."""
        twin = DenseIndex(self.dim, self.backend, self.chunk, self.hnsw_m, self.ef_search, dict(self.meta),
                          self.rescore)  # fmt: skip
        twin.ids, twin._pos = list(self.ids), dict(self._pos)
        twin.vectors = self.vectors.view()
        twin.vectors.flags.writeable = False
        return twin

    def _faiss_index(self):
        import faiss

        if self._faiss is None:
            vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
            if self.backend == "flat":
                index = faiss.IndexFlatIP(self.dim)
            elif self.backend == "int8":
                index = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
                index.train(vectors)
            elif self.backend == "binary":
                index = faiss.IndexLSH(self.dim, self.dim, False, False)  # no rotation, threshold 0: sign bits
            else:
                index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = self.ef_search
            index.add(vectors)
            self._faiss = index
        return self._faiss

    def search(self, queries: np.ndarray, k: int = 100) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k scores (Q, k) and ids for each query vector."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if not self.ids:
            return np.zeros((len(queries), 0), np.float32), [[] for _ in queries]
        if self.backend == "exact":
            scores, idx = exact_topk(queries, self.vectors, k, self.chunk)
        elif self.backend == "binary":
            scores, idx = self._binary_search(queries, min(k, len(self.ids)))
        else:
            scores, idx = self._faiss_index().search(queries, min(k, len(self.ids)))
        return scores, [[self.ids[j] for j in row if j >= 0] for row in idx]

    def _binary_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top candidates from the sign bits, then (rescore > 0) their float inner products."""
        n = len(self.ids)
        hamming, cand = self._faiss_index().search(queries, min(n, k * max(self.rescore, 1)))
        if not self.rescore:
            return self.dim - 2 * hamming[:, :k], cand[:, :k]
        scores = np.empty((len(queries), k), np.float32)
        idx = np.empty((len(queries), k), np.int64)
        for q, rows in enumerate(cand):
            rows = np.sort(rows[rows >= 0])  # ascending: sequential reads of a memory-mapped file, stable ties
            s = np.asarray(self.vectors[rows], dtype=np.float32) @ queries[q]
            top = np.argsort(-s, kind="stable")[:k]
            scores[q], idx[q] = s[top], rows[top]
        return scores, idx

    def bytes_per_doc(self) -> float:
        """Bytes per document of the vectors the search reads in memory: 4 * dim for float32 (exact, flat,
        hnsw, before HNSW links), the FAISS code size for int8 (dim) and binary (dim / 8). The float vectors
        a binary index rescores with stay on disk, memory-mapped, once it is loaded."""
        if self.backend in ("int8", "binary"):
            return float(self._faiss_index().code_size)
        return 4.0 * self.dim

    def search_run(self, qids: list[str], queries: np.ndarray, k: int = 100, batch: int = 256) -> Run:
        run: Run = {}
        for start in tqdm(range(0, len(qids), batch), desc="search", disable=len(qids) <= batch):
            scores, ids = self.search(queries[start : start + batch], k)
            for qid, row_s, row_i in zip(qids[start : start + batch], scores, ids):
                run[qid] = {d: float(s) for d, s in zip(row_i, row_s)}
        return run

    def save(self, folder: str | Path) -> None:
        with atomic_path(folder, "index") as tmp:
            tmp.mkdir()
            np.save(tmp / "vectors.npy", self.vectors, allow_pickle=False)
            (tmp / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False))
            extra = {}
            if self.backend in ("hnsw", "int8", "binary"):  # a graph is slow to rebuild; codes load alone
                import faiss

                graph = faiss.serialize_index(self._faiss_index())
                np.save(tmp / "faiss.npy", graph, allow_pickle=False)
                extra["faiss_sha256"] = digest(graph)
            meta = {"kind": "dense", "dim": self.dim, "backend": self.backend, "hnsw_m": self.hnsw_m,
                    "ef_search": self.ef_search, "chunk": self.chunk, "count": len(self.ids),
                    **({"rescore": self.rescore} if self.backend == "binary" else {}), **extra,
                    **self.meta}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> DenseIndex:
        """Open a saved index, checking every file against meta.json (count, dimension, graph checksum)."""
        folder = Path(folder)
        meta = read_meta(folder, "dense", ("dim", "backend", "count"))
        own = {"kind", "dim", "backend", "hnsw_m", "ef_search", "chunk", "count", "faiss_sha256", "rescore"}
        compact = meta["backend"] in ("int8", "binary")
        if compact and "faiss_sha256" not in meta:
            raise damaged(folder, "meta.json", f"no 'faiss_sha256' field for the {meta['backend']} codes")
        index = cls(meta["dim"], meta["backend"], meta.get("chunk", 65536), meta.get("hnsw_m", 32),
                    meta.get("ef_search", 128), meta={k: v for k, v in meta.items() if k not in own},
                    rescore=meta.get("rescore", 10))  # fmt: skip
        index.ids = check_ids(folder, "ids.json", read_json(folder, "ids.json"), meta["count"])
        index.vectors = load_array(folder, "vectors.npy", (meta["count"], meta["dim"]), np.float32, mmap=compact)
        index._pos = {doc_id: n for n, doc_id in enumerate(index.ids)}
        if len(index._pos) != len(index.ids):
            raise damaged(folder, "ids.json", "an id appears twice")
        if compact or (folder / "faiss.npy").is_file():
            index._faiss = load_graph(folder, meta)
        return index


def load_graph(folder: Path, meta: dict):
    """The saved HNSW graph or compact codes, deserialised only once its bytes match the checksum written
    beside it, and checked to be the kind of FAISS index meta.json's backend names."""
    import faiss

    graph = load_array(folder, "faiss.npy", (None,), np.uint8)
    if meta.get("faiss_sha256") not in (None, digest(graph)):
        raise damaged(folder, "faiss.npy", "checksum differs from meta.json's (truncated or altered)")
    try:
        index = faiss.deserialize_index(graph)
    except RuntimeError as e:
        raise damaged(folder, "faiss.npy", f"not a FAISS index ({str(e).splitlines()[0]})") from None
    if index.ntotal != meta["count"] or index.d != meta["dim"]:
        raise damaged(folder, "faiss.npy", f"{index.ntotal} vectors of dim {index.d}; meta.json says "
                                           f"{meta['count']} of dim {meta['dim']}")  # fmt: skip
    kinds = {"hnsw": faiss.IndexHNSWFlat, "int8": faiss.IndexScalarQuantizer, "binary": faiss.IndexLSH}
    want = kinds.get(meta["backend"])
    if want is not None and not isinstance(index, want):
        raise damaged(folder, "faiss.npy", f"a {type(index).__name__}, but meta.json's backend is "
                                           f"'{meta['backend']}'")  # fmt: skip
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = meta.get("ef_search", 128)
    return index
