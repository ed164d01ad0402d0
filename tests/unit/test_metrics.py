"""evaluate() against hand-computed trec_eval definitions (linear-gain nDCG, as trec_eval and BEIR)."""

from __future__ import annotations

from math import log2

import pytest

from irlm.eval.metrics import DEFAULT_METRICS, evaluate

QRELS = {
    "q1": {"d1": 1, "d3": 1, "d9": 0},
    "q2": {"d2": 2, "d4": 1},
    "q3": {"d5": 1},  # judged, but absent from the run: scores 0 everywhere
}
RUN = {
    "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6},  # relevant at ranks 1 and 3
    "q2": {"d1": 0.9, "d3": 0.8, "d4": 0.7, "d2": 0.1},  # d4 (grade 1) at rank 3, d2 (grade 2) at rank 4
    "qx": {"d1": 1.0},  # not judged: ignored
}

NDCG_Q1 = (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3))
NDCG_Q2 = (1 / log2(4) + 2 / log2(5)) / (2 / log2(2) + 1 / log2(3))
AP_Q1 = (1 / 1 + 2 / 3) / 2
AP_Q2 = (1 / 3 + 2 / 4) / 2


def test_evaluate_hand_computed():
    got = evaluate(RUN, QRELS)
    assert set(got) == set(DEFAULT_METRICS)
    expected = {
        "ndcg@10": (NDCG_Q1 + NDCG_Q2 + 0) / 3,
        "mrr@10": (1 + 1 / 3 + 0) / 3,
        "recall@100": (1 + 1 + 0) / 3,
        "map": (AP_Q1 + AP_Q2 + 0) / 3,
        "hits@1": 1 / 3,
        "hits@5": 2 / 3,
        "hits@10": 2 / 3,
    }
    assert got == pytest.approx(expected, abs=2e-6)


def test_per_query_values():
    for qid, expected in (("q1", NDCG_Q1), ("q2", NDCG_Q2)):
        got = evaluate({qid: RUN[qid]}, {qid: QRELS[qid]}, ["ndcg@10"])["ndcg@10"]
        assert got == pytest.approx(expected, abs=1e-6)
    assert NDCG_Q2 == pytest.approx(0.5174, abs=1e-4)  # sanity of the hand formula itself


def test_missing_judged_query_counts_as_zero():
    only_q1 = {"q1": QRELS["q1"]}
    full = evaluate(RUN, only_q1, ["mrr@10", "recall@100"])
    with_missing = evaluate(RUN, {**only_q1, "q3": QRELS["q3"]}, ["mrr@10", "recall@100"])
    assert full == {"mrr@10": 1.0, "recall@100": 1.0}
    assert with_missing == {"mrr@10": 0.5, "recall@100": 0.5}
    assert evaluate({"q1": {}}, only_q1, ["ndcg@10"]) == {"ndcg@10": 0.0}  # empty ranking


def test_cutoffs_apply():
    run = {"q": {f"d{i}": 100.0 - i for i in range(20)}}  # d0 first ... d19 last
    qrels = {"q": {"d11": 1, "d1": 1}}
    got = evaluate(run, qrels, ["mrr@10", "recall@5", "recall@100", "hits@1", "hits@5"])
    assert got == pytest.approx({"mrr@10": 1 / 2, "recall@5": 1 / 2, "recall@100": 1.0, "hits@1": 0.0,
                                 "hits@5": 1.0})  # fmt: skip


def test_hits_is_a_rate_not_a_count():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    assert evaluate(run, {"q": {"a": 1, "b": 1, "c": 1}}, ["hits@5"]) == {"hits@5": 1.0}


def test_no_relevant_judgements_is_an_error():
    with pytest.raises(ValueError, match="no relevant"):
        evaluate(RUN, {"q1": {"d1": 0}})


def test_mrr_cutoff_ignores_a_hit_below_it():
    run = {"q": {f"d{i}": 100.0 - i for i in range(20)}}
    assert evaluate(run, {"q": {"d11": 1}}, ["mrr@10", "mrr@20"]) == pytest.approx({"mrr@10": 0.0, "mrr@20": 1 / 12}, abs=1e-6)


def test_ties_keep_the_run_order():
    """Equal scores rank in the order the retriever returned them, not by document id (trec_eval's rule)."""
    first, second = {"q": {"a": 1.0, "z": 1.0}}, {"q": {"z": 1.0, "a": 1.0}}
    assert evaluate(first, {"q": {"z": 1}}, ["mrr@10"]) == {"mrr@10": 0.5}
    assert evaluate(second, {"q": {"z": 1}}, ["mrr@10"]) == {"mrr@10": 1.0}
    tied = {"q": {f"d{i}": 1.0 for i in range(30)}}  # long enough that an unstable sort would reorder it
    assert evaluate(tied, {"q": {"d3": 1}}, ["mrr@10"]) == pytest.approx({"mrr@10": 1 / 4})
