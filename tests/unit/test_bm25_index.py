"""BM25Index on a tiny corpus: ordering, edits, save/load without pickle."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TOY_CORPUS

from irlm.errors import InputError
from irlm.index.bm25 import BM25Index

IDS = [d["_id"] for d in TOY_CORPUS]
TEXTS = [f"{d['title']} {d['text']}".strip() for d in TOY_CORPUS]
QUERIES = {"q1": "why do dogs bark", "q2": "quantum computer qubits", "q3": "sourdough bread starter",
           "q4": "river egypt", "qnone": "zzzz unrelated xylophone"}  # fmt: skip
EXPECTED_TOP = {"q1": "d2", "q2": "d3", "q3": "d4", "q4": "d5"}


@pytest.fixture
def index():
    idx = BM25Index()
    idx.add(IDS, TEXTS)
    return idx


def test_matching_doc_ranks_first(index):
    run = index.search(QUERIES, k=3)
    assert {q: next(iter(run[q])) for q in EXPECTED_TOP} == EXPECTED_TOP
    assert run["qnone"] == {}  # documents with score 0 are not returned
    for docs in run.values():
        scores = list(docs.values())
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
        assert len(docs) <= 3


def test_scores_vector(index):
    s = index.scores("dogs barking")
    assert s.shape == (len(IDS),)
    assert int(np.argmax(s)) == IDS.index("d2")
    assert np.count_nonzero(s) == 1


def test_add_more_documents(index):
    index.search(QUERIES, k=1)  # builds the index; add must invalidate it
    index.add(["d6"], ["a violin and a xylophone in the orchestra"])
    assert list(index.search({"q": "xylophone"}, k=5)["q"]) == ["d6"]
    with pytest.raises(InputError, match="duplicate id 'd6'"):
        index.add(["d6"], ["again"])
    with pytest.raises(InputError, match="duplicate"):
        index.add(["d7", "d7"], ["x", "y"])
    assert len(index) == 6


def test_update_changes_results(index):
    assert list(index.search({"q": "bread"}, k=5)["q"]) == ["d4"]
    index.update(["d1"], ["fresh bread bread bread from the bakery"])
    assert list(index.search({"q": "bread"}, k=5)["q"]) == ["d1", "d4"]
    assert "cat" not in " ".join(index.texts)
    with pytest.raises(InputError, match="unknown id 'nope'"):
        index.update(["nope"], ["x"])


def test_remove_drops_ids(index):
    index.remove(["d2", "not-there"])
    assert index.ids == ["d1", "d3", "d4", "d5"]
    run = index.search(QUERIES, k=5)
    assert run["q1"] == {} and all("d2" not in docs for docs in run.values())
    assert next(iter(run["q3"])) == "d4"
    index.remove(index.ids)
    with pytest.raises(InputError, match="empty"):
        index.search({"q": "bread"})


def test_save_load_round_trip(tmp_path, index):
    before = index.search(QUERIES, k=5)
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    assert (loaded.k1, loaded.b, loaded.ids, loaded.texts) == (0.9, 0.4, IDS, TEXTS)
    after = loaded.search(QUERIES, k=5)
    assert after.keys() == before.keys()
    for q in before:
        assert list(after[q]) == list(before[q])
        assert after[q] == pytest.approx(before[q], rel=1e-6)
    loaded.add(["d6"], ["xylophone"])  # still editable after load
    assert list(loaded.search({"q": "xylophone"})["q"]) == ["d6"]


def test_saved_files_need_no_pickle(tmp_path, index):
    index.save(tmp_path / "bm25")
    files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "bm25") for f in fs]
    assert files
    for path in files:
        assert path.endswith((".npy", ".json", ".jsonl")), path
        if path.endswith(".npy"):
            np.load(path, allow_pickle=False)
        elif path.endswith(".json"):
            json.loads(open(path, encoding="utf-8").read())
    assert os.listdir(tmp_path) == ["bm25"]


def test_query_of_stopwords_or_unseen_words_returns_nothing():
    from irlm.index import BM25Index

    idx = BM25Index()
    idx.add(["a", "b"], ["the cat sat on the mat", "dogs bark loudly"])
    run = idx.search({"empty": "", "stop": "what is it?", "unseen": "zebra quasar"}, k=5)
    assert run == {"empty": {}, "stop": {}, "unseen": {}}


def test_importing_bm25_keeps_jax_from_reserving_the_gpu():
    # bm25s imports jax when present; jax's default reserves 75 % of GPU memory, which starved
    # the retriever trained next in the same process (out of memory at step 0 on an H100).
    code = "import os; import irlm.index.bm25; print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])"
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "false"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true"  # a user's own setting wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "true"


@pytest.mark.parametrize("collection", ["scifact", "cranfield", "nq-open-oracle"])
def test_query_terms_equal_bm25s_tokenize_on_every_real_query(collection):
    """The served path's tokenizer (no progress bars) must give the terms bm25s gives, or scores drift."""
    from conftest import DATA

    from irlm.data.beir import read_queries

    queries = list(read_queries(DATA / collection / "queries.jsonl").values())
    queries += ["", "THE AND OF", "Vitamin-D's 2x effects, e.g. in mice?!", "naïve café Ünïcode ß"]
    for language, stopwords in (("english", "en"), (None, None)):
        idx = BM25Index(language=language, stopwords=stopwords)
        assert [idx.query_terms(q) for q in queries] == idx._tokenize(queries), (language, stopwords)


def test_an_unknown_stopword_list_is_a_one_line_input_error():
    with pytest.raises(InputError, match="field 'stopwords' klingon not recognized"):
        BM25Index(stopwords="klingon")
