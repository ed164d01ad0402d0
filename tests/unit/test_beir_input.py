"""Bad input in BEIR files: one InputError naming file, line and field; BEIR's skips become warnings."""

from __future__ import annotations

import logging

import pytest
from conftest import TOY_CORPUS, TOY_QRELS, TOY_QUERIES, write_beir, write_jsonl

from irlm.data.beir import load_beir, read_corpus, read_qrels, read_queries
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
