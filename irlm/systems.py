"""Saved systems: one registry from kind to loader, so search, eval, serve and the pipeline open any of them.

Every saved system carries a meta.json manifest with its `kind` (BM25, dense and hybrid indexes,
Self-Retrieval and reasoning model folders, reasoning indexes). Folders written before manifests existed
are recognised by their method's config file.

    >>> system = load_retriever("runs/scifact-bm25")  # doctest: +SKIP
    >>> system.search({"q1": "what causes scurvy"}, k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from irlm.errors import InputError
from irlm.index.check import read_json
from irlm.options import BUILT  # what build_retriever makes from a dataset and a model

# a method's model folder from before manifests: the config file its save() writes
LEGACY_FILES = {"selfretrieval.json": "selfretrieval", "irlm_reasoning.json": "reasoning"}


def _bm25(folder: Path, device, data, settings):
    from irlm.index.retrievers import BM25Retriever

    return BM25Retriever.load(folder)


def _dense(folder: Path, device, data, settings):
    from irlm.index.retrievers import DenseRetriever

    return DenseRetriever.load(folder, device=device, **settings)


def _hybrid(folder: Path, device, data, settings):
    from irlm.index.retrievers import HybridRetriever

    # parts may be any saved system (BM25 with a reasoning index, say), so they open through this registry;
    # encoder settings go to the parts that have an encoder
    def open_part(part: Path, device):
        return load_retriever(part, device, data, **(settings if has_encoder(part) else {}))

    return HybridRetriever.load(folder, device=device, open_part=open_part)


def _selfretrieval(folder: Path, device, data, settings):
    from irlm.data import load_dataset
    from irlm.methods.selfretrieval.retriever import CONFIG_FILE, SelfRetriever

    data = data or json.loads((folder / CONFIG_FILE).read_text()).get("data")
    if not data:
        raise InputError("no dataset named; pass the corpus the model memorised", str(folder / CONFIG_FILE),
                         field="data")  # fmt: skip
    return SelfRetriever.load(folder, load_dataset(data).corpus, device)


def _reasoning(folder: Path, device, data, settings):
    from irlm.methods.reasoning.retriever import ReasoningRetriever

    return ReasoningRetriever.load(folder, device, data)


LOADERS = {"bm25": _bm25, "dense": _dense, "hybrid": _hybrid, "selfretrieval": _selfretrieval,
           "reasoning": _reasoning}  # fmt: skip


def system_kind(folder) -> str:
    """The kind a saved folder holds, from its manifest (or, for older model folders, its config file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", str(folder))
    if (folder / "meta.json").is_file():
        meta = read_json(folder, "meta.json")
        kind = meta.get("kind") if isinstance(meta, dict) else None
        if kind not in LOADERS:
            raise InputError(f"unknown system kind '{kind}' (known: {', '.join(LOADERS)})",
                             str(folder / "meta.json"), field="kind")  # fmt: skip
        return kind
    for name, kind in LEGACY_FILES.items():
        if (folder / name).is_file():
            return kind
    raise InputError("not a saved irlm system (no meta.json): build one with `irlm index` or a train command",
                     str(folder))  # fmt: skip


def load_retriever(folder, device: str | None = None, data: str | None = None, **encoder):
    """Open any saved system. `data` names a corpus for model folders that need one (a Self-Retrieval
    model defaults to the corpus it memorised; a reasoning model embeds it on load). `encoder` settings
    (dtype="fp32") replace the saved encoder's for this load; a system without an LLMEncoder refuses them
    rather than ignore them."""
    kind = system_kind(folder)
    if encoder and not has_encoder(folder):
        raise InputError(f"{folder} is a {kind} system without a dense encoder, so {', '.join(encoder)} cannot "
                         "apply to it")  # fmt: skip
    return LOADERS[kind](Path(folder), device, data, encoder)


def has_encoder(folder) -> bool:
    """Whether a saved system embeds queries with an LLMEncoder: a dense index, or a hybrid with a dense part."""
    from irlm.index.retrievers import read_hybrid_meta

    kind = system_kind(folder)
    if kind == "hybrid":
        parts = read_hybrid_meta(Path(folder))["parts"]
        return any(has_encoder(Path(folder) / f"part{n}") for n in range(parts))
    return kind == "dense"


def build_retriever(kind: str, data: str, model: str = "minilm-l6", device: str | None = None,
                    backend: str = "exact", fusion: str = "rrf", weight: float = 0.5, **encoder):  # fmt: skip
    """A system built over `data`'s corpus now: bm25, dense (encoder `model`), hybrid (BM25 + that dense
    model, fused), or reasoning (`model` is a reasoning model folder)."""
    from irlm.data import load_dataset

    if kind not in BUILT:
        raise InputError(f"unknown retriever '{kind}'; choose {', '.join(BUILT)}")
    corpus = load_dataset(data).corpus
    return _build(kind, corpus, model, device, backend, fusion, weight, encoder)


def _build(kind, corpus, model, device, backend, fusion, weight, encoder):
    from irlm.index.retrievers import BM25Retriever, DenseRetriever, HybridRetriever

    if kind == "bm25":
        return BM25Retriever.build(corpus)
    if kind == "hybrid":
        parts = [_build(k, corpus, model, device, backend, fusion, weight, encoder) for k in ("bm25", "dense")]
        return HybridRetriever(parts, fusion, [1 - weight, weight])
    if kind == "reasoning":
        from irlm.methods.reasoning.model import ReasoningEmbedder
        from irlm.methods.reasoning.retriever import ReasoningRetriever

        return ReasoningRetriever.build(corpus, ReasoningEmbedder.from_pretrained(model, device), backend=backend)
    from irlm.models import LLMEncoder  # torch: only dense systems pay for it

    return DenseRetriever.build(corpus, LLMEncoder.from_pretrained(model, device=device, **encoder), backend)
