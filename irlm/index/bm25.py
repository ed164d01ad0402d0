"""BM25 over bm25s, with the settings that reproduce pyserini on BEIR.

bm25s has no incremental update, so the index keeps its texts and re-indexes lazily after
add / remove / update. Saved as bm25s' own pickle-free arrays plus texts.jsonl and meta.json.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

# bm25s imports jax when it is installed, and jax then reserves 75 % of the GPU's memory at once:
# a retriever trained in the same process runs out of memory at its first step.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import bm25s  # noqa: E402
import numpy as np  # noqa: E402
import Stemmer  # noqa: E402
from bm25s.tokenization import _infer_stopwords  # noqa: E402  (private; tests/unit/test_bm25_index.py pins it)

from irlm.data.beir import text_problem, validate_ids  # noqa: E402
from irlm.errors import InputError  # noqa: E402
from irlm.index.check import damaged, load_array, read_json, read_meta  # noqa: E402
from irlm.types import Run
from irlm.utils import atomic_path

# bm25s sets its own logger to DEBUG on import, so its "Building index from tokens" printed at every default
# run; NOTSET makes it follow the application's level (`irlm -v` shows it)
logging.getLogger("bm25s").setLevel(logging.NOTSET)

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s.tokenize's default, as scikit-learn's CountVectorizer
SPLIT = re.compile(TOKEN_PATTERN).findall


class BM25Index:
    """Lexical index. k1=0.9, b=0.4 are pyserini's BEIR defaults (BM25 flat, nDCG@10 0.679 on SciFact).

    Example:
        >>> idx = BM25Index()
        >>> idx.add(["a", "b"], ["the cat sat", "dogs bark loudly"])
        >>> list(idx.search({"q": "barking dog"}, k=1)["q"])
        ['b']
    """

    def __init__(self, k1: float = 0.9, b: float = 0.4, method: str = "lucene", language: str = "english",
                 stopwords: str = "en"):  # fmt: skip
        self.k1, self.b, self.method, self.language, self.stopwords = k1, b, method, language, stopwords
        try:
            self._stops = frozenset(_infer_stopwords(stopwords))
        except ValueError as e:  # bm25s: "<name> not recognized. Only English stopwords as default, ..."
            raise InputError(str(e), field="stopwords") from None
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._bm25 = None

    def __len__(self) -> int:
        return len(self.ids)

    def _tokenize(self, texts: list[str], progress: bool = False):
        stemmer = Stemmer.Stemmer(self.language) if self.language else None
        return bm25s.tokenize(texts, token_pattern=TOKEN_PATTERN, stopwords=self.stopwords, stemmer=stemmer,
                              return_ids=False, show_progress=progress)  # fmt: skip

    def add(self, ids: list[str], texts: list[str]) -> None:
        validate_ids(ids)
        check_texts(ids, texts)
        known = set(self.ids)
        dup = next((i for i in ids if i in known), None)
        if dup is not None or len(set(ids)) != len(ids):
            raise InputError(f"duplicate id '{dup or 'in batch'}' in BM25 index; use update() to replace it")
        self.ids.extend(ids)
        self.texts.extend(texts)
        self._bm25 = None

    def update(self, ids: list[str], texts: list[str]) -> None:
        check_texts(ids, texts)
        pos = {doc_id: n for n, doc_id in enumerate(self.ids)}
        for doc_id, text in zip(ids, texts):
            if doc_id not in pos:
                raise InputError(f"cannot update unknown id '{doc_id}'")
            self.texts[pos[doc_id]] = text
        self._bm25 = None

    def remove(self, ids: list[str]) -> None:
        gone = set(ids)
        kept = [(i, t) for i, t in zip(self.ids, self.texts) if i not in gone]
        self.ids, self.texts = [i for i, _ in kept], [t for _, t in kept]
        self._bm25 = None

    def copy(self) -> BM25Index:
        """Another index of the same documents and settings, to edit while searches go on reading this one."""
        twin = BM25Index(self.k1, self.b, self.method, self.language, self.stopwords)
        twin.ids, twin.texts = list(self.ids), list(self.texts)
        return twin

    def _index(self, progress: bool | None = None):
        if self._bm25 is None:
            progress = verbose() if progress is None else progress
            if not self.ids:
                raise InputError("BM25 index is empty: add documents before searching")
            tokens = self._tokenize(self.texts, progress)
            if not any(tokens):  # bm25s would fail deep inside with "max() arg is an empty sequence"
                raise InputError(f"no indexable term in any of the {len(self.ids)} documents "
                                 "(all empty, or only stopwords)")  # fmt: skip
            self._bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
            self._bm25.index(tokens, show_progress=progress)
        return self._bm25

    def build(self, progress: bool | None = None) -> BM25Index:
        """Index the documents now. progress: bm25s' seven progress bars, by default only at debug logging
        (`irlm -v`): indexing SciFact takes seconds, and the bars would bury the one line a command prints."""
        self._index(progress)
        return self

    def query_terms(self, query: str) -> list[str]:
        """The terms bm25s.tokenize gives one query (its pattern, lower case, stopwords, stems) without the
        three progress bars it creates per call: a third of a served search's time."""
        words = [w for w in SPLIT(query.lower()) if w not in self._stops]
        # a Stemmer per call (under a microsecond): one Stemmer must not be shared between threads
        return Stemmer.Stemmer(self.language).stemWords(words) if self.language else words

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for one query. (N,)"""
        bm25 = self._index(progress=False)
        tokens = [t for t in self.query_terms(query) if t in bm25.vocab_dict]
        if not tokens:  # empty, all stopwords or all unseen: nothing matches
            return np.zeros(len(self.ids), dtype=np.float32)
        return bm25.get_scores(tokens)

    def search(self, queries: dict[str, str], k: int = 100) -> Run:
        run: Run = {}
        for qid, text in queries.items():
            s = self.scores(text)
            top = np.argpartition(-s, min(k, len(s)) - 1)[:k]
            top = top[np.argsort(-s[top], kind="stable")]
            run[qid] = {self.ids[j]: float(s[j]) for j in top if s[j] > 0}
        return run

    def save(self, folder: str | Path) -> None:
        with atomic_path(folder, "index") as tmp:
            self._index(progress=False).save(tmp / "bm25s")
            with open(tmp / "texts.jsonl", "w", encoding="utf-8") as f:
                for doc_id, text in zip(self.ids, self.texts):
                    f.write(json.dumps({"_id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            meta = {"kind": "bm25", "k1": self.k1, "b": self.b, "method": self.method, "language": self.language,
                    "stopwords": self.stopwords, "count": len(self.ids)}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> BM25Index:
        """Open a saved index, checking texts.jsonl and bm25s' arrays against meta.json's count."""
        folder = Path(folder)
        meta = read_meta(folder, "bm25", ("k1", "b", "method", "language", "stopwords"))
        index = cls(meta["k1"], meta["b"], meta["method"], meta["language"], meta["stopwords"])
        rows = read_texts(folder)
        if "count" in meta and len(rows) != meta["count"]:
            raise damaged(folder, "texts.jsonl", f"{len(rows)} documents, but meta.json counts {meta['count']}")
        index.ids, index.texts = [r["_id"] for r in rows], [r["text"] for r in rows]
        index._bm25 = load_bm25s(folder, len(rows))
        return index


def verbose() -> bool:
    return logging.getLogger(__name__).isEnabledFor(logging.DEBUG)


def check_texts(ids: list[str], texts: list[str]) -> None:
    """Texts texts.jsonl can hold: a lone surrogate would fail the save after the whole index was built."""
    for doc_id, text in zip(ids, texts):
        problem = text_problem(text) if isinstance(text, str) else f"is not a string but {type(text).__name__}"
        if problem:
            raise InputError(f"the text of document '{doc_id}' {problem}")


def read_texts(folder: Path) -> list[dict]:
    path = folder / "texts.jsonl"
    if not path.is_file():
        raise damaged(folder, "texts.jsonl", "missing")
    rows = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                rows.append(text_row(folder, n, line))
        except UnicodeDecodeError as e:
            raise damaged(folder, f"texts.jsonl:{len(rows) + 1}", f"not UTF-8 ({e.reason})") from None
    return rows


def text_row(folder: Path, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError:
        raise damaged(folder, f"texts.jsonl:{n}", "not valid JSON") from None
    if not isinstance(row, dict) or not isinstance(row.get("_id"), str) or not isinstance(row.get("text"), str):
        raise damaged(folder, f"texts.jsonl:{n}", 'expected {"_id": str, "text": str}')
    return row


def load_bm25s(folder: Path, count: int):
    """bm25s' own arrays; their document count must match texts.jsonl, or a search indexes past its end."""
    params = read_json(folder, "bm25s/params.index.json")
    if not isinstance(params, dict) or params.get("num_docs", count) != count:
        got = params.get("num_docs") if isinstance(params, dict) else params
        raise damaged(folder, "bm25s/params.index.json", f"num_docs {got}, but texts.jsonl has {count}")
    for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"):
        load_array(folder, f"bm25s/{name}", (None,))
    try:
        return bm25s.BM25.load(folder / "bm25s", load_corpus=False)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise damaged(folder, "bm25s", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
