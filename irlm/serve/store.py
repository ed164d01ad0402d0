"""The document store behind POST /documents and DELETE /documents/{id}: which served retrievers can
change over HTTP (BM25, dense and hybrids of them), and the copy-on-write edit that saves the new index
before one assignment swaps it in, so a search reads the old index or the new, never half of an update."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np

from irlm.batching import MicroBatcher
from irlm.errors import InputError
from irlm.serve.lane import submit
from irlm.serve.limits import APIError
from irlm.types import Document, Retriever
from irlm.utils import check_replaceable

READ_ONLY = ("this server is read-only: start it with --writable (irlm serve) or writable=True (build_app) to "
             "add, replace or delete documents")  # fmt: skip


EDITABLE = ("bm25", "dense")  # the kinds whose `index` this store edits; a hybrid of them, through its `parts`


def doc_count(retriever: Retriever) -> int:
    """The documents served: the Retriever protocol's len (a hybrid's parts index the same corpus)."""
    return len(retriever)


def leaves(retriever: Retriever) -> list[Retriever]:
    """The retrievers a hybrid fuses (recursively); [retriever] for any other."""
    if retriever.kind == "hybrid":
        return [leaf for part in retriever.parts for leaf in leaves(part)]
    return [retriever]


def update_refusal(retriever: Retriever, encoder) -> str | None:
    """Why the served documents cannot change over HTTP; None for BM25, dense and hybrids of those."""
    kinds = [leaf.kind for leaf in leaves(retriever)]
    if "selfretrieval" in kinds:
        return "Self-Retrieval memorised its corpus in the model's weights: new documents need another training run"
    other = next((kind for kind in kinds if kind not in EDITABLE), None)
    if other is not None:
        return f"a '{other}' retriever has no document index that can be edited (BM25, dense and hybrids of them can)"
    dense = [leaf for leaf in leaves(retriever) if leaf.kind == "dense"]
    if len(dense) > 1:
        return "this hybrid has more than one dense part; the server runs one encoder, so it could embed for one only"
    if dense and dense[0].encoder is not encoder:
        return "the server's encoder is not the dense index's own, so new documents would be embedded differently"
    return None


def upsert(index, ids: list[str], values: list) -> None:
    """Replace the ids `index` holds, add the others (values: texts for BM25, vectors for dense)."""
    known = set(index.ids)
    old = [n for n, doc_id in enumerate(ids) if doc_id in known]
    new = [n for n, doc_id in enumerate(ids) if doc_id not in known]
    if old:
        index.update([ids[n] for n in old], [values[n] for n in old])
    if new:
        index.add([ids[n] for n in new], [values[n] for n in new])


def edited(retriever, change):
    """A shallow copy of `retriever` whose index (each part's, in a hybrid) is a copy that `change(kind, index)`
    edited; `retriever` and its indexes stay untouched, so searches go on reading them meanwhile."""
    staged = copy.copy(retriever)
    if retriever.kind == "hybrid":
        staged.parts = [edited(part, change) for part in retriever.parts]
    else:
        staged.index = retriever.index.copy()
        change(retriever.kind, staged.index)
    return staged


def adopt(retriever, staged) -> None:
    """One assignment swaps the edited index (or the hybrid's list of parts) in: a search reads the old or the new."""
    if retriever.kind == "hybrid":
        retriever.parts = staged.parts
    else:
        retriever.index = staged.index


class Documents:
    """Adds, replaces and deletes the served documents. One writer at a time (the lock) edits copies of the
    indexes, saves them to `folder` (atomically: irlm.utils.atomic_path) and only then swaps them in: searches
    meanwhile read the old index, none sees half of an update, and an answered update is on disk."""

    def __init__(self, retriever, folder: Path, embed):
        self.retriever, self.folder, self.embed = retriever, folder, embed
        self.dense = any(leaf.kind == "dense" for leaf in leaves(retriever))
        self.lock = threading.Lock()

    def upsert(self, docs: list[Document]) -> dict:
        ids, texts = [d.id for d in docs], [d.full_text() for d in docs]  # title and text, as `irlm index` does
        vectors = self.embed(texts) if self.dense else None  # before the lock: encoding holds no other writer back
        with self.lock:
            replaced = len(set(ids) & set(self.ids()))
            self.commit(lambda kind, index: upsert(index, ids, texts if kind == "bm25" else vectors))
            return {"added": len(ids) - replaced, "replaced": replaced, "docs": doc_count(self.retriever)}

    def delete(self, doc_id: str) -> dict:
        with self.lock:
            if doc_id not in set(self.ids()):
                raise APIError(404, f"no document with id '{doc_id}' in the index", "id")
            if doc_count(self.retriever) == 1:
                raise APIError(409, f"'{doc_id}' is the last document; an index keeps at least one", "id")
            self.commit(lambda kind, index: index.remove([doc_id]))
            return {"deleted": 1, "docs": doc_count(self.retriever)}

    def ids(self) -> list[str]:
        return leaves(self.retriever)[0].index.ids  # a hybrid's parts index the same documents

    def commit(self, change) -> None:
        try:
            staged = edited(self.retriever, change)
            staged.save(self.folder)  # the folder holds the old documents or the new ones, even after a kill -9
        except InputError as e:  # e.g. BM25 finds no indexable term left
            raise APIError(400, str(e)) from e
        adopt(self.retriever, staged)


def document_store(retriever, encoder, batcher: MicroBatcher, writable: bool, folder) -> tuple[Documents | None, str]:
    """The writer behind /documents, or None and why updates are refused (403). A writable server that could
    not save its updates refuses to start rather than failing at the first one."""
    why = update_refusal(retriever, encoder)
    if not writable:
        return None, f"this server cannot change its documents: {why}" if why else READ_ONLY
    if why:
        raise InputError(f"--writable: {why}")
    if folder is None:
        raise InputError("writable=True needs the index folder the updates are saved to", field="folder")
    check_replaceable(folder, "--writable index", kind="index")

    def embed(texts: list[str]) -> list[np.ndarray]:  # through the batcher: its thread owns the encoder
        return [row for row, _ in submit(batcher, [("passage", text, 0) for text in texts])]

    return Documents(retriever, Path(folder), embed), ""
