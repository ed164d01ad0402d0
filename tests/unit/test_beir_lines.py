"""The BEIR reader names the line of a bad byte (not the first line of its 8 KB block) and refuses ids a
TREC file could not hold."""

from __future__ import annotations

import pytest

from irlm.data.beir import read_corpus, read_qrels
from irlm.errors import InputError


def test_a_bad_byte_is_reported_on_its_own_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "c", "text": "\xff"}\n')
    with pytest.raises(InputError, match=r"corpus.jsonl:3: not UTF-8"):
        read_corpus(path)


def test_a_bad_byte_in_qrels_is_one_line(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td\xe9\t1\n")
    with pytest.raises(InputError, match=r"test.tsv:3: not UTF-8"):
        read_qrels(path)


@pytest.mark.parametrize("doc_id", ["a b", "tab\there", "", " "])
def test_an_id_with_whitespace_is_refused(tmp_path, doc_id):
    import json

    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "ok", "text": "x"}) + "\n" + json.dumps({"_id": doc_id, "text": "y"}) + "\n")
    with pytest.raises(InputError, match=r"corpus.jsonl:2: field '_id' must be non-empty and without whitespace"):
        read_corpus(path)


def test_a_corpus_without_an_indexable_term_is_one_error():
    from irlm.index import BM25Index

    index = BM25Index()
    index.add(["a", "b"], ["the a of", "and the"])
    with pytest.raises(InputError, match="no indexable term in any of the 2 documents"):
        index.build(progress=False)
