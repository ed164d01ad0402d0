"""Fusion: pure functions over Run dicts, checked against hand-computed values."""

from __future__ import annotations

import pytest

from irlm.index.fusion import rrf, top_k, weighted, with_bm25

RUN_A = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
RUN_B = {"q": {"d3": 0.9, "d4": 0.5}, "q2": {"x": 1.0}}


def test_rrf_hand_computed():
    fused = rrf([RUN_A, RUN_B], k=60)
    assert fused["q"] == pytest.approx({
        "d1": 1 / 61,
        "d2": 1 / 62,
        "d3": 1 / 63 + 1 / 61,
        "d4": 1 / 62,
    }, abs=1e-12)  # fmt: skip
    assert fused["q2"] == pytest.approx({"x": 1 / 61})


def test_rrf_small_k_and_depth():
    fused = rrf([RUN_A, RUN_B], k=1, depth=1)  # only each run's top document counts
    assert fused["q"] == pytest.approx({"d1": 1 / 2, "d3": 1 / 2})


def test_rrf_ranks_by_score_not_insertion_order():
    fused = rrf([{"q": {"low": 0.1, "high": 5.0}}], k=0)
    assert fused["q"] == pytest.approx({"high": 1.0, "low": 0.5})


def test_weighted_min_max_hand_computed():
    fused = weighted([RUN_A, RUN_B], [0.7, 0.3])
    # onto [0.001, 1]: RUN_A q: min 1, max 3 -> d1 1, d2 0.001 + 0.999 * 0.5 = 0.5005, d3 0.001;
    # RUN_B q: min 0.5, max 0.9 -> d3 1, d4 0.001
    assert fused["q"] == pytest.approx({"d1": 0.7, "d2": 0.35035, "d3": 0.3007, "d4": 0.0003}, abs=1e-12)
    assert fused["q2"] == pytest.approx({"x": 0.3})  # a run's only hit is its top hit: 1


def test_weighted_negative_scores():
    fused = weighted([{"q": {"a": -4.0, "b": -2.0, "c": 0.0}}], [2.0])
    assert fused["q"] == pytest.approx({"a": 0.002, "b": 1.001, "c": 2.0})


@pytest.mark.parametrize("hits", [{"only": 7.3}, {"t1": 2.0, "t2": 2.0}, {"t1": -1.0, "t2": -1.0, "t3": -1.0}])
def test_a_lone_or_all_tied_hit_normalises_to_one(hits):
    assert weighted([{"q": hits}], [1.0])["q"] == dict.fromkeys(hits, 1.0)


def test_tied_top_hits_are_one_and_the_lowest_stays_above_not_retrieved():
    fused = weighted([{"q": {"t1": 5.0, "t2": 5.0, "low": 1.0}}, {"q": {"other": 1.0, "o2": 0.5}}], [0.5, 0.5])
    assert fused["q"]["t1"] == fused["q"]["t2"] == pytest.approx(0.5)
    # each retrieved by one run, at that run's lowest score: above the 0 a document counts where it was not retrieved
    assert fused["q"]["low"] == fused["q"]["o2"] == pytest.approx(0.0005)


def test_retrieved_lowest_ranks_above_not_retrieved():
    """Two documents the dense run scores alike; BM25 retrieved one of them at its lowest score: that one wins."""
    dense = {"q": {"a": 0.9, "x": 0.5, "y": 0.5}}
    bm25 = {"q": {"b": 9.0, "x": 1.0}}
    fused = with_bm25(dense, bm25, 0.5)["q"]
    assert fused["x"] > fused["y"] > 0


def test_a_lone_bm25_hit_keeps_its_weight():
    """BM25 finds one document only (a rare term): with most of the weight on BM25 it must rank first."""
    from irlm.index import BM25Index

    bm25 = BM25Index()
    bm25.add(["rare", "d2", "d3"], ["the zygomorphic flower", "a red flower", "the garden path"])
    run = bm25.build(progress=False).search({"q": "zygomorphic"}, k=10)
    assert list(run["q"]) == ["rare"]  # exactly one hit
    dense = {"q": {"d2": 0.9, "d3": 0.8, "rare": 0.1}}
    fused = with_bm25(dense, run, dense_weight=0.3)
    assert list(top_k(fused, 1)["q"]) == ["rare"]
    assert fused["q"]["rare"] == pytest.approx(0.7 + 0.3 * 0.001)


def test_weighted_needs_one_weight_per_run():
    with pytest.raises(ValueError, match="2 runs but 1 weights"):
        weighted([RUN_A, RUN_B], [1.0])


def test_top_k_orders_and_cuts():
    run = {"q": {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.7}, "r": {"x": 1.0}}
    cut = top_k(run, 2)
    assert list(cut["q"]) == ["b", "d"]
    assert cut["q"] == {"b": 0.9, "d": 0.7}
    assert cut["r"] == {"x": 1.0}


def test_rrf_then_top_k_ordering():
    fused = top_k(rrf([RUN_A, RUN_B]), 3)
    ranked = list(fused["q"])
    assert len(ranked) == 3
    assert ranked[:2] == ["d3", "d1"]
    assert ranked[2] in {"d2", "d4"}  # tied at 1/62


def test_tuned_fusion_weight_follows_the_run_that_ranks_well():
    from irlm.eval.benchmark import tune_fusion_weight

    qrels = {"q": {"rel": 1}}
    good = {"q": {"rel": 3.0, "a": 2.0, "b": 1.0}}
    bad = {"q": {"a": 3.0, "b": 2.0, "rel": 1.0}}
    w, scores = tune_fusion_weight(good, bad, qrels)  # dense good; min-max: rel w, a 1 - w / 2: rel first once w > 2/3
    assert w == 0.7 and scores[w] == 1.0 and scores[0.65] < 1.0 and scores[0.0] < scores[w]
    w, scores = tune_fusion_weight(bad, good, qrels)  # BM25 good: the lowest weight, BM25 alone
    assert w == 0.0 and scores[0.0] == 1.0 and scores[1.0] < 1.0


def test_tuned_fusion_weight_ties_keep_bm25_alone():
    from irlm.eval.benchmark import tune_fusion_weight

    run = {"q": {"rel": 2.0, "a": 1.0}}
    w, scores = tune_fusion_weight(run, run, {"q": {"rel": 1}})
    assert set(scores.values()) == {1.0} and w == 0.0
    assert tune_fusion_weight(run, run, {"q": {"rel": 1}}, grid=(1.0, 0.5, 0.0))[0] == 0.0  # not the first seen


def test_dense_weight_zero_ranks_as_bm25_alone_ties_included():
    bm25 = {"q": {"rel": 2.0, "x": 2.0, "y": 1.0}}
    dense = {"q": {"x": 1.0, "z": 0.9, "rel": 0.5}}  # would break the rel/x tie the other way
    assert list(top_k(with_bm25(dense, bm25, 0.0), 2)["q"]) == list(top_k(bm25, 2)["q"]) == ["rel", "x"]
    assert list(top_k(with_bm25(dense, bm25, 1.0), 1)["q"]) == ["x"]  # the weight is the dense run's
