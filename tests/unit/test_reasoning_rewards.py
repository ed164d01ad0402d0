"""Rewards and keyword condensing of the reasoning embedders against hand computations (METHODS.md §4-5)."""

from __future__ import annotations

import math
from math import log2

import pytest

from irlm.eval.metrics import evaluate
from irlm.methods.reasoning.keywords import condense, render
from irlm.methods.reasoning.rewards import (
    PRESETS,
    combine,
    dcg_reward,
    format_reward,
    length_reward,
    rank_accuracy,
)

# ---- format


@pytest.mark.parametrize(
    "text",
    [
        "<think>lemonade, iced</think><emb>",
        "<think> lemonade, iced </think><emb>",  # decoders may put spaces around special tokens
        " <think>a</think> <emb>\n",
        "<think>line one\nline two</think><emb>",
    ],
)
def test_format_accepts_think_then_emb(text):
    assert format_reward(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "<think></think><emb>",  # empty reasoning
        "<think>  \n </think><emb>",  # whitespace-only reasoning
        "<think>a</think><emb> extra",  # text after <emb>
        "<think>a</think><emb><emb>",
        "<think>a</think>",  # no <emb>
        "<think>a<emb>",  # no </think>
        "a</think><emb>",  # no <think>
        "prefix <think>a</think><emb>",  # text before <think>
        "<think>a</think> b <emb>",  # text between </think> and <emb>
        "<think>a<think>b</think><emb>",  # nested tag
        "<think>a</think><think>b</think><emb>",  # two blocks
        "<emb><think>a</think>",  # wrong order
        "",
    ],
)
def test_format_rejects_everything_else(text):
    assert format_reward(text) == 0.0


# ---- length


def test_length_is_an_indicator_of_the_budget():
    assert [length_reward(n) for n in (0, 1, 16, 17, 100)] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert length_reward(5, budget=4) == 0.0
    assert length_reward(4, budget=4) == 1.0


def test_length_rejects_negative_counts():
    with pytest.raises(ValueError):
        length_reward(-1)
    with pytest.raises(ValueError):
        length_reward(3, budget=-1)


# ---- rank accuracy (LREM)


def test_rank_accuracy_exact_values():
    assert rank_accuracy(1, 100) == 1.0
    assert rank_accuracy(100, 100) == 0.0
    assert rank_accuracy(10, 100) == pytest.approx(0.5, abs=1e-12)
    assert rank_accuracy(2, 8) == pytest.approx(2 / 3, abs=1e-12)  # 1 - log 2 / log 8 = 1 - 1/3
    assert rank_accuracy(1, 2) == 1.0 and rank_accuracy(2, 2) == 0.0


def test_rank_accuracy_is_monotone_and_clamped():
    values = [rank_accuracy(r, 50) for r in range(1, 51)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert rank_accuracy(51, 50) == 0.0 and rank_accuracy(10_000, 50) == 0.0


@pytest.mark.parametrize("rank,n", [(0, 10), (-3, 10), (1, 1), (1, 0)])
def test_rank_accuracy_rejects_bad_input(rank, n):
    with pytest.raises(ValueError):
        rank_accuracy(rank, n)


# ---- DCG reward (Search-R3)


def test_dcg_single_relevant_is_inverse_log_discount():
    assert dcg_reward([1]) == 1.0
    assert dcg_reward([3]) == pytest.approx(0.5, abs=1e-12)  # 1 / log2(4)
    assert dcg_reward([7]) == pytest.approx(1 / 3, abs=1e-12)  # 1 / log2(8)
    assert dcg_reward([math.inf]) == 0.0  # not retrieved


def test_dcg_graded_hand_computed():
    # grade 1 at rank 3, grade 2 at rank 4; ideal: 2 at rank 1, 1 at rank 2
    want = (1 / log2(4) + 2 / log2(5)) / (2 / log2(2) + 1 / log2(3))
    assert dcg_reward([3, 4], gains=[1, 2]) == pytest.approx(want, abs=1e-12)
    assert dcg_reward([1, 2], gains=[2, 1]) == pytest.approx(1.0, abs=1e-12)
    assert dcg_reward([2, 1], gains=[2, 1]) < 1.0  # order of the gains matters


def test_dcg_cutoff_drops_ranks_past_k():
    # ranks 1 and 12 at k=10: DCG counts only rank 1; the ideal holds both at ranks 1 and 2
    want = 1.0 / (1 + 1 / log2(3))
    assert dcg_reward([1, 12], k=10) == pytest.approx(want, abs=1e-12)
    assert dcg_reward([11], k=10) == 0.0
    assert dcg_reward([11]) == pytest.approx(1 / log2(12), abs=1e-12)


def test_dcg_matches_the_projects_ndcg():
    # the same ranking through irlm.eval.metrics (ranx, linear gains as trec_eval)
    qrels = {"q": {"d2": 2, "d5": 1, "d7": 1}}
    run = {"q": {f"d{i}": 20.0 - i for i in range(1, 16)}}  # d_i at rank i
    ranks, gains = [2, 5, 7], [2, 1, 1]
    got = evaluate(run, qrels, ["ndcg@5", "ndcg@100"])
    assert dcg_reward(ranks, gains, k=5) == pytest.approx(got["ndcg@5"], abs=1e-6)
    assert dcg_reward(ranks, gains) == pytest.approx(got["ndcg@100"], abs=1e-6)


@pytest.mark.parametrize(
    "ranks,gains",
    [([], None), ([0], None), ([2, 2], None), ([1, 2], [1]), ([1], [-1]), ([1, 2], [0, 0])],
)
def test_dcg_rejects_bad_input(ranks, gains):
    with pytest.raises(ValueError):
        dcg_reward(ranks, gains)


# ---- presets


def test_lrem_preset_is_the_papers_weighting():
    assert PRESETS["lrem"] == {"format": 0.5, "length": 0.2, "accuracy": 1.0}
    parts = {"format": 1.0, "length": 0.0, "accuracy": rank_accuracy(10, 100)}
    assert combine(parts, PRESETS["lrem"]) == pytest.approx(0.5 + 0.0 + 0.5, abs=1e-12)
    assert combine({"format": 1.0, "length": 1.0, "accuracy": 1.0}, PRESETS["lrem"]) == pytest.approx(1.7)


def test_searchr3_preset_is_the_dcg_reward():
    assert PRESETS["searchr3"] == {"dcg": 1.0}
    assert combine({"dcg": dcg_reward([3]), "format": 1.0}, PRESETS["searchr3"]) == pytest.approx(0.5)


def test_combine_refuses_a_missing_term():
    with pytest.raises(KeyError, match="length"):
        combine({"format": 1.0, "accuracy": 1.0}, PRESETS["lrem"])


# ---- keywords


def test_condense_drops_stopwords_query_words_and_repeats_keeping_order():
    reasoning = "Something colder than TEA: lemonade, iced coffee, Lemonade again, and sparkling water with ice."
    query = "a drink more refreshing than tea"
    want = ["Something", "colder", "lemonade", "iced", "coffee", "sparkling", "water", "ice"]
    assert condense(reasoning, query) == want


def test_condense_query_words_compare_without_case():
    assert condense("Drink DRINK drinks juice", "drink") == ["drinks", "juice"]  # exact match, no stemming


def test_condense_caps_at_sixteen_and_keeps_the_first():
    words = [f"word{i}" for i in range(40)]
    got = condense(" ".join(words), "query")
    assert got == words[:16]
    assert condense(" ".join(words), "query", max_keywords=3) == words[:3]
    assert condense(" ".join(words), "query", max_keywords=0) == []


def test_condense_keeps_compounds_and_merges_possessives():
    got = condense("The user's intent: e-commerce refunds; user wants return-policy pages.", "")
    assert got == ["user", "intent", "e-commerce", "refunds", "wants", "return-policy", "pages"]


def test_condense_drops_single_characters_and_punctuation_only():
    assert condense("x , ... - 42 a b cc", "") == ["42", "cc"]


def test_render_joins_keywords_and_passes_the_format_check():
    kws = condense("lemonade, iced coffee", "refreshing drink")
    assert render(kws) == "lemonade, iced, coffee"
    assert format_reward(f"<think>{render(kws)}</think><emb>") == 1.0
    assert render([]) == ""
