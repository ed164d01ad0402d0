"""ReasoningRetriever: a think-then-embed model and the index of its document embeddings.

It implements the Retriever protocol (search -> Run), so `irlm eval --index`, fusion and serving are the
shared ones. Saved as a small folder that names the model (like a dense index names its encoder):

    meta.json   {"kind": "reasoning", "model": "<model folder>", "thinking": "self"}
    index/      the DenseIndex of the corpus

A model folder itself (`output_dir/final`) also opens as a system when a corpus is given: its documents
are embedded on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from irlm.data import load_dataset
from irlm.errors import InputError
from irlm.index.check import read_meta, write_manifest
from irlm.methods.reasoning.model import CONFIG_FILE, ReasoningEmbedder
from irlm.types import Corpus, Queries, Run
from irlm.utils import atomic_path

THINKING = ("self", "none")  # greedy thoughts of the model's own, or the query embedded directly


@dataclass
class ThinkingConfig:
    """What a server reports of the encoder (the fields of EncoderConfig it reads): the markers are the
    model's own, so no text is prepended."""

    model: str
    max_length: int
    query_prefix: str = ""
    passage_prefix: str = ""


class ThinkingEncoder:
    """The Encoder protocol over a ReasoningEmbedder: each query thinks (greedily) before it is embedded,
    so serving (`/encode`, `/v1/embeddings`) and fusion treat it like any other encoder."""

    def __init__(self, emb: ReasoningEmbedder, thinking: str = "self"):
        self.emb, self.thinking = emb, thinking
        self.dim = emb.model.config.hidden_size
        self.config = ThinkingConfig(emb.source or "reasoning", emb.max_length)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """The tokens of each text as written (a query's thought comes on top, like a completion's)."""
        return [self.emb.ids(t) for t in texts]

    def encode_corpus(self, docs: list[str], batch_size: int | None = None, **_):
        return self.emb.encode_docs(docs, batch_size or 32)

    def encode_queries(self, queries: list[str], thoughts: list | None = None, **_):
        if thoughts is None and self.thinking == "self":
            thoughts = [t for t, _ in self.emb.sample(queries, 1, do_sample=False)]
        return self.emb.encode_queries(queries, thoughts)


class ReasoningRetriever:
    kind = "reasoning"

    def __init__(self, emb: ReasoningEmbedder, index, thinking: str = "self", fill=None):
        if thinking not in (*THINKING, "source"):
            raise InputError(f"thinking must be {' or '.join(THINKING)}, not '{thinking}'", field="thinking")
        if thinking == "source" and fill is None:
            raise InputError("thinking 'source' needs a fill(query_id, query) for the <think> span")
        self.emb, self.index, self.thinking, self.fill = emb, index, thinking, fill
        self.encoder = ThinkingEncoder(emb, thinking)

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def build(cls, corpus: Corpus, emb: ReasoningEmbedder, thinking: str = "self", fill=None,
              backend: str = "exact"):  # fmt: skip
        from irlm.index.dense import DenseIndex  # torch is loaded already: the model is

        system = cls(emb, DenseIndex(emb.model.config.hidden_size, backend), thinking, fill)
        system.index.add(corpus.ids, system.encoder.encode_corpus(corpus.texts()))
        return system

    def think(self, queries: Queries) -> list | None:
        """Greedy samples (thought ids, raw ids) per query for `self`; None when queries do not think."""
        if self.thinking != "self":
            return None
        return self.emb.sample(list(queries.values()), 1, do_sample=False)

    def search(self, queries: Queries, k: int = 100, samples: list | None = None) -> Run:
        """samples: the output of `think(queries)` when the caller already has it (evaluation reports
        the share of well-formed thoughts from the same samples it scores)."""
        if samples is None:
            samples = self.think(queries)
        thoughts = [t for t, _ in samples] if samples else None
        if self.thinking == "source":
            thoughts = [self.fill(q, text) for q, text in queries.items()]
        vectors = self.encoder.encode_queries(list(queries.values()), thoughts)
        return self.index.search_run(list(queries), vectors, k)

    def save(self, folder) -> None:
        model = getattr(self.emb, "source", None)
        if model is None:
            raise InputError("save the reasoning model first (emb.save) and load it from its folder")
        if self.thinking == "source":
            raise InputError("a 'source' system carries a Python fill function and cannot be saved")
        with atomic_path(folder, "index") as tmp:
            tmp.mkdir()
            self.index.save(tmp / "index")
            write_manifest(tmp, self.kind, model=str(Path(model).resolve()), thinking=self.thinking)

    @classmethod
    def load(cls, folder, device: str | None = None, data: str | None = None) -> ReasoningRetriever:
        """A folder saved by `save`, or a model folder with `data`, the corpus to embed now."""
        from irlm.index.dense import DenseIndex

        folder = Path(folder)
        if (folder / CONFIG_FILE).is_file():
            if not data:
                raise InputError(f"{folder} is a reasoning model without an index: name the corpus to embed "
                                 "(--data), or build one with `irlm index --retriever reasoning`")  # fmt: skip
            return cls.build(load_dataset(data).corpus, ReasoningEmbedder.from_pretrained(str(folder), device))
        meta = read_meta(folder, cls.kind, ("model",))
        emb = ReasoningEmbedder.from_pretrained(meta["model"], device)
        return cls(emb, DenseIndex.load(folder / "index"), meta.get("thinking", "self"))
