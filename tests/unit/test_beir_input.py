"""Bad input in BEIR files: one InputError naming file, line and field; BEIR's skips become warnings."""

from __future__ import annotations

import json
import logging
import re

import pytest
from conftest import TOY_CORPUS, TOY_QRELS, TOY_QUERIES, write_beir, write_jsonl

from irlm.data.beir import ID_RULE, load_beir, read_corpus, read_qrels, read_queries
from irlm.errors import InputError


def _lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = _lines(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}', "", '{"_id": "b", "text": ')
    with pytest.raises(InputError) as e:
        read_corpus(path)
    assert f"{path}:3" in str(e.value)  # the blank line 2 still counts
    assert "malformed JSON" in str(e.value)
    assert (e.value.path, e.value.line) == (path, 3)


def test_non_object_json_line(tmp_path):
    path = _lines(tmp_path / "queries.jsonl", '{"_id": "a", "text": "x"}', '["_id", "b"]')
    with pytest.raises(InputError, match=r"queries\.jsonl:2"):
        read_queries(path)


@pytest.mark.parametrize("field", ["_id", "text"])
@pytest.mark.parametrize("reader,name", [(read_corpus, "corpus.jsonl"), (read_queries, "queries.jsonl")])
def test_missing_field_names_file_line_and_field(tmp_path, reader, name, field):
    bad = {"_id": "b", "text": "y"}
    del bad[field]
    path = write_jsonl(tmp_path / name, [{"_id": "a", "text": "x"}, {"_id": "c", "text": "z"}, bad])
    with pytest.raises(InputError) as e:
        reader(path)
    msg = str(e.value)
    assert f"{path}:3" in msg and f"'{field}'" in msg and "missing" in msg
    assert (e.value.line, e.value.field) == (3, field)


def test_numeric_id_is_read_as_string(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": 7, "text": "x"}])
    assert read_corpus(path).ids == ["7"]


def test_non_string_text_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "a", "text": ["not", "a", "string"]}])
    with pytest.raises(InputError, match=r"corpus\.jsonl:1: field 'text'"):
        read_corpus(path)


@pytest.mark.parametrize("reader,name", [(read_corpus, "corpus.jsonl"), (read_queries, "queries.jsonl")])
def test_duplicate_ids(tmp_path, reader, name):
    rows = [{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}]
    path = write_jsonl(tmp_path / name, rows)
    with pytest.raises(InputError) as e:
        reader(path)
    msg = str(e.value)
    assert f"{path}:3" in msg and "'_id'" in msg and "duplicate id 'a'" in msg and "line 1" in msg


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_corpus(tmp_path, content):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="empty") as e:
        read_corpus(path)
    assert str(path) in str(e.value)


def test_empty_corpus_through_load_beir(tmp_path):
    folder = write_beir(tmp_path / "ds", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    (folder / "corpus.jsonl").write_text("")
    with pytest.raises(InputError, match=r"corpus\.jsonl.*empty"):
        load_beir(folder)


def test_qrels_wrong_column_count(tmp_path):
    path = _lines(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2")
    with pytest.raises(InputError) as e:
        read_qrels(path)
    assert f"{path}:3" in str(e.value) and "3 columns" in str(e.value) and "got 2" in str(e.value)


def test_qrels_non_numeric_score(tmp_path):
    path = _lines(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\thigh")
    with pytest.raises(InputError) as e:
        read_qrels(path)
    assert f"{path}:3" in str(e.value) and "'score'" in str(e.value) and "high" in str(e.value)
    assert e.value.field == "score"


def test_qrels_without_header(tmp_path):
    path = _lines(tmp_path / "test.tsv", "q1\td1\t1", "q1\td2\t2", "q2\td1\t0")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}


def test_unknown_qrels_are_dropped_with_a_warning(tmp_path, caplog):
    qrels = {"test": [("q1", "d2", 1), ("q1", "nodoc1", 1), ("q2", "nodoc2", 1), ("q2", "d3", 1),
                      ("noq", "d1", 1), ("q3", "d4", 2)]}  # fmt: skip
    folder = write_beir(tmp_path / "ds", TOY_CORPUS, TOY_QUERIES, qrels)
    with caplog.at_level(logging.WARNING):
        ds = load_beir(folder)
    assert ds.qrels["test"] == {"q1": {"d2": 1}, "q2": {"d3": 1}, "q3": {"d4": 2}}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "test.tsv" in msg
    assert "2 judgement(s) naming unknown documents" in msg
    assert "1 unknown query" in msg


def test_query_whose_only_judgements_are_unknown_is_dropped(tmp_path, caplog):
    qrels = {"test": [("q1", "d2", 1), ("q2", "gone", 1)]}
    folder = write_beir(tmp_path / "ds", TOY_CORPUS, TOY_QUERIES, qrels)
    with caplog.at_level(logging.WARNING):
        ds = load_beir(folder)
    assert ds.qrels["test"] == {"q1": {"d2": 1}}
    assert list(ds.split_queries("test")) == ["q1"]
    assert "1 judgement(s)" in caplog.text


def test_clean_qrels_log_no_warning(toy_beir, caplog):
    with caplog.at_level(logging.WARNING):
        load_beir(toy_beir)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_crlf_loads_identically_to_lf(tmp_path):
    lf = load_beir(write_beir(tmp_path / "lf", TOY_CORPUS, TOY_QUERIES, TOY_QRELS, newline="\n"))
    crlf = load_beir(write_beir(tmp_path / "crlf", TOY_CORPUS, TOY_QUERIES, TOY_QRELS, newline="\r\n"))
    assert b"\r\n" in (tmp_path / "crlf" / "qrels" / "test.tsv").read_bytes()
    assert crlf.corpus == lf.corpus
    assert crlf.queries == lf.queries
    assert crlf.qrels == lf.qrels
    assert not any("\r" in d.text or "\r" in d.id for d in crlf.corpus.docs)
    assert lf.qrels["test"] == {"q1": {"d2": 1}, "q2": {"d3": 1}, "q3": {"d4": 2}}


def test_crlf_error_line_numbers_match(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "x"}\r\n{"_id": "b", "text": "y"}\r\n{"_id": "c"}\r\n')
    with pytest.raises(InputError, match=r"corpus\.jsonl:3: field 'text'"):
        read_corpus(path)


def test_load_beir_reads_everything(toy_beir):
    ds = load_beir(toy_beir)
    assert ds.name == "toy"
    assert ds.corpus.ids == ["d1", "d2", "d3", "d4", "d5"]
    assert ds.corpus.texts()[0] == "Cats the cat sat on the warm mat all afternoon"
    assert ds.corpus.texts()[2] == "quantum computers use qubits and superposition"  # no title, no separator
    assert ds.queries["q2"] == "how does a quantum computer work"
    assert set(ds.qrels) == {"test"}


def test_write_beir_round_trip(toy_beir, tmp_path):
    from irlm.data.beir import write_beir as irlm_write_beir

    ds = load_beir(toy_beir)
    irlm_write_beir(tmp_path / "copy", ds)
    again = load_beir(tmp_path / "copy")
    assert (again.corpus, again.queries, again.qrels) == (ds.corpus, ds.queries, ds.qrels)


# ids that could not round-trip: whitespace splits a TREC line (a newline even forges one for another query),
# a control character reaches the terminal, a lone surrogate has no UTF-8 (JSON's "\ud800" escape makes one)
BAD_IDS = {"space": "a b", "tab": "a\tb", "forged line": "d1 1 1.0 t\nq2 Q0 forged", "escape": "d\x1b[2J",
           "nul": "d\x00", "delete": "d\x7f", "no-break space": "a\u00a0b", "line separator": "a\u2028b",
           "lone surrogate": "d\ud800", "empty": ""}  # fmt: skip
GOOD_IDS = ["é-1", "a/b", "PMC:123#4", "10.1000/xyz", "中文", "😀", "0"]


def _two_docs(tmp_path, name: str, second: dict):
    path = tmp_path / name
    path.write_text(json.dumps({"_id": "ok", "text": "x"}) + "\n" + json.dumps(second) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS)
@pytest.mark.parametrize("reader,name", [(read_corpus, "corpus.jsonl"), (read_queries, "queries.jsonl")])
def test_the_reader_refuses_an_id_that_cannot_round_trip(tmp_path, reader, name, bad):
    path = _two_docs(tmp_path, name, {"_id": bad, "text": "y"})
    with pytest.raises(InputError, match=rf"{name}:2: field '_id' {ID_RULE}") as e:
        reader(path)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)  # the message itself is one safe line


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS)
@pytest.mark.parametrize("entry", ["bm25", "dense", "trec"])
def test_the_python_api_refuses_the_same_ids(tmp_path, entry, bad):
    import numpy as np

    from irlm.eval.runs import write_trec
    from irlm.index import BM25Index, DenseIndex

    add = {"bm25": lambda: BM25Index().add(["ok", bad], ["x", "y"]),
           "dense": lambda: DenseIndex(2).add(["ok", bad], np.ones((2, 2), np.float32)),
           "trec": lambda: write_trec({"q": {"ok": 2.0, bad: 1.0}}, tmp_path / "r.trec")}  # fmt: skip
    with pytest.raises(InputError, match=ID_RULE):
        add[entry]()
    assert not (tmp_path / "r.trec").exists()


def test_a_query_id_and_a_run_tag_are_checked_too(tmp_path):
    from irlm.eval.runs import write_trec

    with pytest.raises(InputError, match=rf"query id {ID_RULE}; 'q 1' has whitespace"):
        write_trec({"q 1": {"d": 1.0}}, tmp_path / "r.trec")
    with pytest.raises(InputError, match=r"run tag .*'my run'"):
        write_trec({"q1": {"d": 1.0}}, tmp_path / "r.trec", tag="my run")


def test_good_ids_round_trip_through_the_reader_an_index_and_a_trec_file(tmp_path):
    from irlm.eval.runs import read_trec, write_trec
    from irlm.index import BM25Index

    rows = [{"_id": doc_id, "text": f"cat number {n}"} for n, doc_id in enumerate(GOOD_IDS)]
    corpus = read_corpus(write_jsonl(tmp_path / "corpus.jsonl", rows))
    assert corpus.ids == GOOD_IDS
    index = BM25Index()
    index.add(corpus.ids, corpus.texts())
    run = index.build(progress=False).search({"q-é": "cat"}, k=10)
    write_trec(run, tmp_path / "r.trec")
    back = read_trec(tmp_path / "r.trec")
    assert list(back) == ["q-é"] and back["q-é"] == pytest.approx(run["q-é"], abs=1e-6)
    assert set(back["q-é"]) == set(GOOD_IDS)


@pytest.mark.parametrize("field", ["text", "title"])
def test_a_lone_surrogate_in_a_text_is_refused_with_file_and_line(tmp_path, field):
    path = _two_docs(tmp_path, "corpus.jsonl", {"_id": "b", "text": "fine", field: "half of \ud83d a pair"})
    escaped = re.escape("('\\ud83d') at character 9")  # shown as an escape, not as the bad character
    with pytest.raises(InputError, match=rf"corpus\.jsonl:2: field '{field}' has a lone surrogate {escaped}"):
        read_corpus(path)
    path = _two_docs(tmp_path, "queries.jsonl", {"_id": "q", "text": "x \udc80"})
    with pytest.raises(InputError, match=r"queries\.jsonl:2: field 'text' has a lone surrogate"):
        read_queries(path)


def test_a_whole_pair_is_not_a_lone_surrogate(tmp_path):
    path = _two_docs(tmp_path, "corpus.jsonl", {"_id": "b", "text": "a pair \ud83d\ude00 is one emoji"})
    assert read_corpus(path).docs[1].text == "a pair 😀 is one emoji"


def test_the_index_api_refuses_a_text_it_could_not_save():
    from irlm.index import BM25Index

    index = BM25Index()
    with pytest.raises(InputError, match="the text of document 'b' has a lone surrogate"):
        index.add(["a", "b"], ["fine", "bad \ud800"])
    index.add(["a"], ["fine"])
    with pytest.raises(InputError, match="has a lone surrogate"):
        index.update(["a"], ["bad \udfff"])
    assert index.texts == ["fine"]


def test_a_json_line_nested_too_deeply_is_one_error(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputError, match=r"corpus\.jsonl:2: malformed JSON \(nested too deeply\)"):
        read_corpus(path)


@pytest.mark.parametrize("content,words", [('{"a": ', ":1: malformed JSON"), ("[1, 2]", "expected a JSON object, got list"),
                                           ("[" * 100_000, "nested too deeply"), ('"x"', "got str")])  # fmt: skip
def test_a_json_file_that_is_truncated_or_of_another_type_is_one_error(tmp_path, content, words):
    from irlm.data.beir import read_json_file

    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(words)) as e:
        read_json_file(path)
    assert str(e.value).startswith(str(path))
    assert read_json_file(path, list) == [1, 2] if content == "[1, 2]" else True
