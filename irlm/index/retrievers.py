"""Retrievers: every kind turns queries into a Run, and saves to / loads from one folder."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from irlm.errors import InputError
from irlm.index import fusion
from irlm.index.bm25 import BM25Index
from irlm.index.check import damaged, read_json, read_meta
from irlm.types import Corpus, Queries, Run
from irlm.utils import atomic_path


class BM25Retriever:
    kind = "bm25"
    encoder = None  # lexical: no dense encoder

    def __init__(self, index: BM25Index):
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def build(cls, corpus: Corpus, **params) -> BM25Retriever:
        index = BM25Index(**params)
        index.add(corpus.ids, corpus.texts())
        return cls(index.build())

    def search(self, queries: Queries, k: int = 100) -> Run:
        return self.index.search(queries, k)

    def save(self, folder) -> None:
        self.index.save(folder)

    @classmethod
    def load(cls, folder, **_) -> BM25Retriever:
        return cls(BM25Index.load(folder))


class DenseRetriever:
    """An LLMEncoder and the DenseIndex of its corpus embeddings; the index remembers the encoder."""

    kind = "dense"

    def __init__(self, encoder, index):
        self.encoder, self.index = encoder, index

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def build(cls, corpus: Corpus, encoder, backend: str = "exact", batch_size: int | None = None):
        from irlm.index.dense import DenseIndex  # imported here: BM25-only commands never load torch

        vectors = encoder.encode_corpus(corpus.texts(), batch_size=batch_size)
        index = DenseIndex(encoder.dim, backend, meta={"encoder": asdict(encoder.config)})
        index.add(corpus.ids, vectors)
        return cls(encoder, index)

    def search(self, queries: Queries, k: int = 100) -> Run:
        qids = list(queries)
        vectors = self.encoder.encode_queries([queries[q] for q in qids], progress=len(qids) > 64)
        return self.index.search_run(qids, vectors, k)

    def save(self, folder) -> None:
        self.index.save(folder)

    @classmethod
    def load(cls, folder, device: str | None = None, encoder=None, **settings) -> DenseRetriever:
        """`settings` change the saved encoder's (dtype="fp32", say) for this load; the folder is not changed."""
        from irlm.index.dense import DenseIndex
        from irlm.models.encoder import LLMEncoder

        index = DenseIndex.load(folder)
        if encoder is None:
            cfg = dict(index.meta.get("encoder") or {})
            cfg.pop("trust_remote_code", None)  # never taken from a file
            if not cfg:
                raise InputError("dense index has no encoder config; pass an encoder", str(folder))
            encoder = LLMEncoder.from_pretrained(cfg.pop("model"), device=device, **{**cfg, **settings})
        return cls(encoder, index)


class HybridRetriever:
    """Fusion of two or more retrievers' runs, by RRF or a weighted sum of normalised scores."""

    kind = "hybrid"

    def __init__(self, parts: list, method: str = "rrf", weights: list[float] | None = None, depth: int = 1000):
        if method not in ("rrf", "weighted"):
            raise InputError(f"unknown fusion '{method}'; choose rrf or weighted")
        self.parts, self.method, self.depth = parts, method, depth
        self.weights = weights or [1.0 / len(parts)] * len(parts)

    def __len__(self) -> int:
        return max(len(p) for p in self.parts)  # the parts index the same corpus

    @property
    def encoder(self):
        """The first part's dense encoder (a hybrid embeds with at most one); None when no part has one."""
        return next((p.encoder for p in self.parts if p.encoder is not None), None)

    def search(self, queries: Queries, k: int = 100) -> Run:
        runs = [p.search(queries, max(k, self.depth)) for p in self.parts]
        fused = fusion.rrf(runs) if self.method == "rrf" else fusion.weighted(runs, self.weights)
        return fusion.top_k(fused, k)

    def save(self, folder) -> None:
        with atomic_path(folder, "index") as tmp:
            for n, part in enumerate(self.parts):
                part.save(tmp / f"part{n}")
            meta = {"kind": "hybrid", "method": self.method, "weights": self.weights, "depth": self.depth,
                    "parts": len(self.parts)}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder, device: str | None = None, open_part=None, **_) -> HybridRetriever:
        """open_part(folder, device): how a part opens; irlm.systems passes its own so a part may be any
        saved system, not only the core kinds."""
        meta = read_hybrid_meta(Path(folder))
        open_part = open_part or load_retriever
        parts = [open_part(Path(folder) / f"part{n}", device) for n in range(meta["parts"])]
        return cls(parts, meta["method"], meta["weights"], meta["depth"])


def read_hybrid_meta(folder: Path) -> dict:
    """A hybrid's meta.json, checked: a hand-edited `parts` of 0 or "2" must not reach range() or a division."""
    meta = read_meta(folder, "hybrid", ("method", "weights", "depth", "parts"))
    parts, weights, depth = meta["parts"], meta["weights"], meta["depth"]
    if meta["method"] not in ("rrf", "weighted"):
        raise damaged(folder, "meta.json", f"'method' must be rrf or weighted, got {meta['method']!r}")
    if type(parts) is not int or parts < 1:
        raise damaged(folder, "meta.json", f"'parts' must be a whole number of at least 1, got {parts!r}")
    if not isinstance(weights, list) or len(weights) != parts or not all(_is_number(w) for w in weights):
        raise damaged(folder, "meta.json", f"'weights' must be a list of {parts} numbers, got {weights!r}")
    if type(depth) is not int or depth < 1:
        raise damaged(folder, "meta.json", f"'depth' must be a whole number of at least 1, got {depth!r}")
    return meta


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KINDS = {"bm25": BM25Retriever, "dense": DenseRetriever, "hybrid": HybridRetriever}


def load_retriever(folder, device: str | None = None):
    """Open a saved BM25, dense or hybrid index by the `kind` in its meta.json. irlm.systems.load_retriever
    opens these and every method's saved systems too; this one serves the core and the methods."""
    meta_path = Path(folder) / "meta.json"
    if not meta_path.is_file():
        raise InputError("not an irlm index folder (no meta.json)", str(folder))
    meta = read_json(Path(folder), "meta.json")
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind not in KINDS:
        raise InputError(f"unknown index kind '{kind}'", str(meta_path), field="kind")
    return KINDS[kind].load(folder, device=device)
