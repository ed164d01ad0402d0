"""Dense index: exact (chunked matmul) or FAISS flat / HNSW, with add / remove / update / save / load.

The float32 matrix is the source of truth; a FAISS structure is rebuilt lazily after edits.
Files: vectors.npy (no pickle), ids.json, meta.json; HNSW graphs as faiss bytes in a .npy.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irlm.errors import InputError
from irlm.index.check import check_ids, damaged, digest, load_array, read_json, read_meta
from irlm.types import Run
from irlm.utils import atomic_path

from irlm.options import BACKENDS  # one list for the CLI checks and the index


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
                 ef_search: int = 128, meta: dict | None = None):  # fmt: skip
        if backend not in BACKENDS:
            raise InputError(f"unknown index backend '{backend}'; choose from {', '.join(BACKENDS)}")
        self.dim, self.backend, self.chunk = dim, backend, chunk
        self.hnsw_m, self.ef_search = hnsw_m, ef_search  # M=32 / ef=128: FAISS' usual recall-speed balance
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

    def _faiss_index(self):
        import faiss

        if self._faiss is None:
            if self.backend == "flat":
                index = faiss.IndexFlatIP(self.dim)
            else:
                index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = self.ef_search
            index.add(self.vectors)
            self._faiss = index
        return self._faiss

    def search(self, queries: np.ndarray, k: int = 100) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k scores (Q, k) and ids for each query vector."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if not self.ids:
            return np.zeros((len(queries), 0), np.float32), [[] for _ in queries]
        if self.backend == "exact":
            scores, idx = exact_topk(queries, self.vectors, k, self.chunk)
        else:
            scores, idx = self._faiss_index().search(queries, min(k, len(self.ids)))
        return scores, [[self.ids[j] for j in row if j >= 0] for row in idx]

    def search_run(self, qids: list[str], queries: np.ndarray, k: int = 100, batch: int = 256) -> Run:
        run: Run = {}
        for start in tqdm(range(0, len(qids), batch), desc="search", disable=len(qids) <= batch):
            scores, ids = self.search(queries[start : start + batch], k)
            for qid, row_s, row_i in zip(qids[start : start + batch], scores, ids):
                run[qid] = {d: float(s) for d, s in zip(row_i, row_s)}
        return run

    def save(self, folder: str | Path) -> None:
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            np.save(tmp / "vectors.npy", self.vectors, allow_pickle=False)
            (tmp / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False))
            extra = {}
            if self.backend == "hnsw":  # an HNSW graph is slow to rebuild: keep it
                import faiss

                graph = faiss.serialize_index(self._faiss_index())
                np.save(tmp / "faiss.npy", graph, allow_pickle=False)
                extra["faiss_sha256"] = digest(graph)
            meta = {"kind": "dense", "dim": self.dim, "backend": self.backend, "hnsw_m": self.hnsw_m,
                    "ef_search": self.ef_search, "chunk": self.chunk, "count": len(self.ids), **extra,
                    **self.meta}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> DenseIndex:
        """Open a saved index, checking every file against meta.json (count, dimension, graph checksum)."""
        folder = Path(folder)
        meta = read_meta(folder, "dense", ("dim", "backend", "count"))
        own = {"kind", "dim", "backend", "hnsw_m", "ef_search", "chunk", "count", "faiss_sha256"}
        index = cls(meta["dim"], meta["backend"], meta.get("chunk", 65536), meta.get("hnsw_m", 32),
                    meta.get("ef_search", 128), meta={k: v for k, v in meta.items() if k not in own})  # fmt: skip
        index.ids = check_ids(folder, "ids.json", read_json(folder, "ids.json"), meta["count"])
        index.vectors = load_array(folder, "vectors.npy", (meta["count"], meta["dim"]), np.float32)
        index._pos = {doc_id: n for n, doc_id in enumerate(index.ids)}
        if len(index._pos) != len(index.ids):
            raise damaged(folder, "ids.json", "an id appears twice")
        if (folder / "faiss.npy").is_file():
            index._faiss = load_graph(folder, meta)
        return index


def load_graph(folder: Path, meta: dict):
    """The saved HNSW graph, deserialised only once its bytes match the checksum written beside it."""
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
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = meta.get("ef_search", 128)
    return index
