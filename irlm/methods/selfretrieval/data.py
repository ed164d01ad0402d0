"""Token-level formats and training examples of Self-Retrieval (METHODS.md §3).

Every generated span is built from separately tokenised pieces (title, separator, passage), and
the trie holds exactly those id sequences, so what the model learns to emit and what decoding
may emit are the same tokens; re-tokenising joined strings could merge pieces at the seams.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from irlm.errors import InputError
from irlm.types import Corpus, Qrels, Queries

INDEX_PROMPT = "Sentence: {}\nSource:"
QUERY_PROMPT = "Question: {}\nSource:"
ASSESS_SUFFIX = "\nRelevant:"
ANSWER_PREFIX = "\nAnswer:"
SEP = "\n"


@dataclass
class Format:
    """The tokenised pieces of one corpus under one tokenizer."""

    tokenizer: object
    max_passage_tokens: int = 64
    max_prompt_tokens: int = 64
    titles: bool = True

    def __post_init__(self):
        tok = self.tokenizer
        self.sep = self._single(SEP)
        self.yes, self.no = self._single(" yes"), self._single(" no")
        self.eos = tok.eos_token_id
        self.assess = self.ids(ASSESS_SUFFIX)
        self.answer_prefix = self.ids(ANSWER_PREFIX)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _single(self, text: str) -> int:
        ids = self.ids(text)
        if len(ids) != 1:
            raise InputError(f"Self-Retrieval needs {text!r} to be one token in this tokenizer, got {ids}")
        return ids[0]

    def title(self, title: str) -> list[int]:
        return self.ids(" " + title.strip())

    def passage(self, text: str) -> list[int]:
        return self.ids(" " + text.strip())[: self.max_passage_tokens]

    def entry(self, title: str, text: str) -> list[int]:
        """What retrieval generates for a document: title, separator, passage (or the passage alone)."""
        if self.titles:
            return self.title(title) + [self.sep] + self.passage(text)
        return self.passage(text)

    def prompt(self, template: str, text: str) -> list[int]:
        ids = self.ids(template.format(text.strip()))
        return ids[-self.max_prompt_tokens :]  # the end holds "Source:", which must stay

    def assessment_prompt(self, query: str, entry: list[int]) -> list[int]:
        return self.prompt(QUERY_PROMPT, query) + entry + self.assess


def sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentence split on end punctuation; fragments shorter than min_words join the next one."""
    parts, buf = [], ""
    for piece in re.split(r"(?<=[.!?])\s+", text.strip()):
        buf = f"{buf} {piece}".strip()
        if len(buf.split()) >= min_words:
            parts.append(buf)
            buf = ""
    if buf:
        parts.append(buf)
    return parts


def indexing_examples(corpus: Corpus, fmt: Format, per_passage: int, seed: int) -> list[tuple[list, list]]:
    """(sentence -> whole entry) for every passage: memorising the corpus (paper: P(p | s_i))."""
    rng = random.Random(seed)
    out = []
    for doc in corpus.docs:
        target = fmt.entry(doc.title, doc.text) + [fmt.eos]
        sents = sentences(doc.text) or [doc.text]
        for s in rng.sample(sents, min(per_passage, len(sents))):
            out.append((fmt.prompt(INDEX_PROMPT, s), target))
    return out


def retrieval_examples(queries: Queries, qrels: Qrels, corpus: Corpus, fmt: Format) -> list[tuple[list, list]]:
    """(question -> title -> passage) for each judged pair (paper: P(t | q) P(p | q, t))."""
    docs, out = {d.id: d for d in corpus.docs}, []
    for qid, judged in qrels.items():
        for did, rel in judged.items():
            if rel > 0 and qid in queries and did in docs:
                doc = docs[did]
                out.append((fmt.prompt(QUERY_PROMPT, queries[qid]), fmt.entry(doc.title, doc.text) + [fmt.eos]))
    return out


def assessment_examples(queries: Queries, qrels: Qrels, corpus: Corpus, fmt: Format, negatives: dict[str, list[str]],
                        answers: dict[str, list[str]]) -> list[tuple[list, list]]:  # fmt: skip
    """Positive pairs are judged " yes", then the gold answer follows; negatives are judged " no"."""
    docs, out = {d.id: d for d in corpus.docs}, []
    for qid, judged in qrels.items():
        if qid not in queries:
            continue
        for did, rel in judged.items():
            if rel <= 0 or did not in docs:
                continue
            doc = docs[did]
            target = [fmt.yes]
            if answers.get(qid):
                target += fmt.answer_prefix + fmt.ids(" " + answers[qid][0])
            out.append((fmt.assessment_prompt(queries[qid], fmt.entry(doc.title, doc.text)), target + [fmt.eos]))
        for did in negatives.get(qid, []):
            doc = docs[did]
            out.append((fmt.assessment_prompt(queries[qid], fmt.entry(doc.title, doc.text)), [fmt.no, fmt.eos]))
    return out


def hard_negatives(run: dict[str, dict[str, float]], qrels: Qrels, n: int, doc_ids: list[str] | None = None,
                   seed: int = 0) -> dict[str, list[str]]:  # fmt: skip
    """The n best-ranked passages of each question that are not judged relevant; where the ranking
    runs short (BM25 scores only passages sharing a term), random passages of doc_ids fill in."""
    rng, out = random.Random(seed), {}
    for qid, ranked in run.items():
        gold = {d for d, r in qrels.get(qid, {}).items() if r > 0}
        picked = [d for d in sorted(ranked, key=ranked.get, reverse=True) if d not in gold][:n]
        spare = [d for d in (doc_ids or []) if d not in gold and d not in picked]
        out[qid] = picked + rng.sample(spare, min(n - len(picked), len(spare)))
    return out


def read_answers(folder: str | Path) -> dict[str, list[str]]:
    """answers.jsonl beside a BEIR folder: {"_id": qid, "answers": [...]}; empty if there is none."""
    path = Path(folder) / "answers.jsonl"
    if not path.is_file():
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["_id"])] = [str(a) for a in row["answers"]]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{lineno}: bad answers row ({e})") from None
    return out
