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


def test_case_augmentation_recases_a_share_of_queries_and_passages_the_same_on_every_run():
    from irlm.data.training import recase

    examples = [TrainExample(f"Vitamin D query {i}", [f"Passage on Vitamin D {i}"], [f"Other text {i}"], {"qid": i})
                for i in range(400)]  # fmt: skip
    out = recase(examples, 0.3, seed=7)
    assert recase(examples, 0.3, seed=7) == out and recase(examples, 0.3, seed=8) != out
    assert [e.meta for e in out] == [e.meta for e in examples] and examples[0].query == "Vitamin D query 0"
    texts = [(a, b) for x, y in zip(examples, out) for a, b in zip([x.query, *x.positives, *x.negatives],
                                                                    [y.query, *y.positives, *y.negatives])]
    changed = [(a, b) for a, b in texts if a != b]
    assert 0.24 < len(changed) / len(texts) < 0.36  # 0.3 drawn (1,200 texts: 0.013 standard deviation)
    assert {b for a, b in changed} <= {f(a) for a, _ in changed for f in (str.upper, str.title, str.lower)}
    assert any(b == a.upper() for a, b in changed) and any(b == a.lower() for a, b in changed)
    assert any(b == a.title() and b != a for a, b in changed)
    assert recase(examples, 0.0) == examples and all(e.query.isupper() or e.query.islower() or e.query.istitle()
                                                     for e in recase(examples, 1.0))  # fmt: skip


def test_the_retriever_config_refuses_a_share_outside_0_1():
    from irlm.methods.drama.config import RetrieverConfig

    assert RetrieverConfig(case_augment=0.5, lowercase=False).case_augment == 0.5
    with pytest.raises(InputError, match="case_augment"):
        RetrieverConfig(case_augment=1.5, lowercase=False)
    with pytest.raises(InputError, match="lowercase: false"):
        RetrieverConfig(case_augment=0.3)
