"""Streaming reader and writer for the BEIR layout, with one-line errors for bad input.

A BEIR folder holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`)
and `qrels/<split>.tsv` (header `query-id corpus-id score`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from irlm.errors import InputError
from irlm.types import Corpus, Dataset, Document, Qrels, Queries
from irlm.utils import atomic_path

log = logging.getLogger(__name__)

# an id is a whitespace-separated field of TREC runs and qrels, a URL path segment and a terminal line:
# whitespace would split it, a control character would reach the terminal, a lone surrogate cannot be
# written as UTF-8 at all
_BAD_ID_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
ID_RULE = "must be non-empty and without whitespace, control characters or lone surrogates"


def id_problem(value) -> str | None:
    """Why `value` cannot be a document or query id, or None: the one id rule (ID_RULE) of the BEIR reader, the
    index APIs and the server.

        >>> id_problem("doc-1") is None, id_problem("a b")
        (True, "'a b' has whitespace (' ') at character 2")
    """
    if not isinstance(value, str):
        return f"{shown(value)} is not a string but {type(value).__name__}"
    if not value:
        return "'' is empty"
    bad = _BAD_ID_CHAR.search(value)
    if bad is None:
        return None
    char = bad.group()
    kind = "whitespace" if char.isspace() else "a lone surrogate" if _SURROGATE.match(char) else "a control character"
    return f"{shown(value)} has {kind} ({char!r}) at character {bad.start() + 1}"


def validate_ids(ids, what: str = "document id") -> None:
    """Raise InputError for the first id that breaks the id rule, naming it and why: `["d1", "d\\n2"]` gives
    "document id must be non-empty and without whitespace, ...; 'd\\n2' has whitespace ('\\n') at character 2"."""
    for value in ids:
        problem = id_problem(value)
        if problem:
            raise InputError(f"{what} {ID_RULE}; {problem}")


def text_problem(value: str) -> str | None:
    """Why a text cannot be stored, or None: a lone surrogate (from a JSON escape such as \\ud800) has no UTF-8."""
    bad = _SURROGATE.search(value)
    return None if bad is None else f"has a lone surrogate ({bad.group()!r}) at character {bad.start() + 1}"


def shown(value, limit: int = 60) -> str:
    """A value as a quoted, escaped literal (control characters and surrogates as \\x.. escapes), cut to `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; CRLF endings read as LF."""
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON ({e.msg} at column {e.colno})", path, lineno) from None
        except RecursionError:  # a line such as [[[[...]]]] nested deeper than the parser's stack
            raise InputError("malformed JSON (nested too deeply)", path, lineno) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", path, lineno)
        yield lineno, obj


def read_json_file(path: str | Path, expect: type = dict):
    """A whole-file JSON document (a state.json, a results.json) that must be of type `expect`, or one InputError
    naming the file and line: truncated, nested deeper than the parser's stack, not UTF-8, or another type."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg} at column {e.colno})", path, e.lineno) from None
    except RecursionError:
        raise InputError("malformed JSON (nested too deeply)", path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 ({e.reason} at byte {e.start + 1})", path) from None
    if not isinstance(value, expect):
        raise InputError(f"expected a JSON {JSON_NAMES.get(expect, expect.__name__)}, got {type(value).__name__}", path)
    return value


JSON_NAMES = {dict: "object", list: "array", str: "string"}


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending). Each line is decoded on its own, so a byte that is not
    UTF-8 is reported on its own line (a text-mode file decodes 8 KB blocks and blames the block's first)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"not UTF-8 ({e.reason} at byte {e.start + 1} of the line)", path, lineno) from None
            yield lineno, text.rstrip("\r\n")


def _field(obj: dict, name: str, path, lineno: int, required: bool = True) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise InputError("is missing", path, lineno, name)
        return ""
    if name == "_id" and isinstance(value, int):
        return str(value)  # some BEIR mirrors write numeric ids
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {type(value).__name__}", path, lineno, name)
    if name == "_id" and id_problem(value):
        raise InputError(f"{ID_RULE}; {id_problem(value)}", path, lineno, name)
    if text_problem(value):  # the id, title or text could never be written back as UTF-8
        raise InputError(text_problem(value), path, lineno, name)
    return value


def _check_unique(seen: dict[str, int], doc_id: str, path, lineno: int) -> None:
    if doc_id in seen:
        raise InputError(f"duplicate id '{doc_id}' (first seen on line {seen[doc_id]})", path, lineno, "_id")
    seen[doc_id] = lineno


def read_corpus(path: str | Path) -> Corpus:
    """Read a BEIR corpus; raises InputError on bad lines, duplicate ids or an empty file."""
    docs, seen = [], {}
    for lineno, obj in iter_jsonl(path):
        doc_id = _field(obj, "_id", path, lineno)
        _check_unique(seen, doc_id, path, lineno)
        text = _field(obj, "text", path, lineno)
        docs.append(Document(doc_id, text, _field(obj, "title", path, lineno, required=False)))
    if not docs:
        raise InputError("corpus is empty: no documents to index", path)
    return Corpus(docs)


def read_queries(path: str | Path) -> Queries:
    queries, seen = {}, {}
    for lineno, obj in iter_jsonl(path):
        qid = _field(obj, "_id", path, lineno)
        _check_unique(seen, qid, path, lineno)
        queries[qid] = _field(obj, "text", path, lineno)
    return queries


def read_qrels(path: str | Path) -> Qrels:
    """Read a qrels TSV (`query-id corpus-id score`, header optional)."""
    qrels: Qrels = {}
    for lineno, line in read_lines(path):
        parts = line.split()
        if not parts or (lineno == 1 and parts[0] == "query-id"):
            continue
        if len(parts) != 3:
            raise InputError(f"expected 3 columns (query-id corpus-id score), got {len(parts)}", path, lineno)
        qid, did, score = parts
        try:
            grade = int(float(score))
        except (ValueError, OverflowError):
            raise InputError(f"not a number: '{score}'", path, lineno, "score") from None
        qrels.setdefault(qid, {})[did] = grade
    return qrels


def check_qrels(qrels: Qrels, corpus_ids: set[str], queries: Queries, where: str) -> Qrels:
    """Drop judgements naming unknown documents or queries, as BEIR's evaluation does, with a warning."""
    unknown_q = [qid for qid in qrels if qid not in queries]
    unknown_d = sum(did not in corpus_ids for qid, docs in qrels.items() for did in docs)
    if unknown_q or unknown_d:
        log.warning(
            "%s: skipped %d judgement(s) naming unknown documents and %d unknown quer%s",
            where, unknown_d, len(unknown_q), "y" if len(unknown_q) == 1 else "ies",
        )  # fmt: skip
    kept = {}
    for qid, docs in qrels.items():
        judged = {d: g for d, g in docs.items() if d in corpus_ids}
        if qid in queries and judged:
            kept[qid] = judged
    return kept


def load_beir(folder: str | Path, name: str | None = None) -> Dataset:
    """Load a BEIR folder: corpus, queries and every `qrels/*.tsv` split."""
    folder = Path(folder)
    for needed in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / needed).is_file():
            raise InputError(f"missing {needed}: not a BEIR folder", str(folder / needed))
    corpus = read_corpus(folder / "corpus.jsonl")
    queries = read_queries(folder / "queries.jsonl")
    ids = set(corpus.ids)
    qrels = {
        p.stem: check_qrels(read_qrels(p), ids, queries, str(p)) for p in sorted((folder / "qrels").glob("*.tsv"))
    }
    return Dataset(name or folder.name, corpus, queries, qrels)


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_beir(folder: str | Path, dataset: Dataset) -> None:
    """Write a Dataset as a BEIR folder (used for subsets and synthetic data)."""
    folder = Path(folder)
    write_jsonl(folder / "corpus.jsonl", ({"_id": d.id, "title": d.title, "text": d.text} for d in dataset.corpus.docs))
    write_jsonl(folder / "queries.jsonl", ({"_id": q, "text": t} for q, t in dataset.queries.items()))
    for split, qrels in dataset.qrels.items():
        rows = [f"{q}\t{d}\t{g}" for q, docs in qrels.items() for d, g in docs.items()]
        lines = ["query-id\tcorpus-id\tscore", *rows]
        with atomic_path(folder / "qrels" / f"{split}.tsv") as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
