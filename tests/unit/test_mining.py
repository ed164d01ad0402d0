"""Hard-negative mining: judged documents never become negatives; the margin drops near-ties."""

from __future__ import annotations

import pytest

from irlm.data.mining import mine_examples
from irlm.data.training import TrainExample, read_examples, write_examples
from irlm.errors import InputError
from irlm.types import Corpus, Document


def _corpus(n=6):
    return Corpus([Document(f"d{i}", f"text {i}") for i in range(n)])


def test_judged_never_negative_and_margin_filters():
    run = {"q": {"d0": 10.0, "d1": 9.9, "d2": 8.0, "d3": 7.0, "d4": 1.0, "d5": 0.5}}
    ex = mine_examples({"q": "query"}, {"q": {"d0": 1}}, _corpus(), run, n_negatives=10, margin=0.95)[0]
    assert ex.positives == ["text 0"]
    assert "d0" not in ex.meta["negative_ids"]
    assert "d1" not in ex.meta["negative_ids"]  # 9.9 >= 0.95 * 10: probably an unlabelled positive
    assert ex.meta["negative_ids"] == ["d2", "d3", "d4", "d5"]  # rank order kept


def test_queries_without_positive_in_corpus_are_skipped():
    out = mine_examples({"q": "x", "r": "y"}, {"q": {"zz": 1}, "r": {"d1": 1}}, _corpus(), {}, n_negatives=2)
    assert [e.meta["qid"] for e in out] == ["r"] and out[0].negatives == []


def test_examples_round_trip_and_errors(tmp_path):
    path = tmp_path / "train.jsonl"
    write_examples(path, [TrainExample("q", ["p"], ["n1", "n2"], {"qid": "1"})])
    back = read_examples(path)
    assert back[0].query == "q" and back[0].negatives == ["n1", "n2"] and back[0].meta == {"qid": "1"}
    path.write_text('{"query": "q", "positives": []}\n')
    with pytest.raises(InputError, match=r"train.jsonl:1: field 'positives'"):
        read_examples(path)
