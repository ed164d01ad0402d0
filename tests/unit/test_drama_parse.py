"""Reading teacher output: rankings with chatter, repeats and gaps; queries; triplets."""

from __future__ import annotations

import pytest

from irlm.methods.drama.parse import parse_query, parse_ranking, parse_triplet


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("[3] > [1] > [2]", 3, [2, 0, 1]),
        ("Sure! Here is the ranking: [3] > [1] > [3] > [9]. Hope it helps", 4, [2, 0, 1, 3]),  # repeat, out of range
        ("[2]>[4]", 5, [1, 3, 0, 2, 4]),  # missing ids follow in their original order
        ("[ 2 ] > [1]", 2, [1, 0]),
        ("2 > 1 > 3", 3, [1, 0, 2]),  # bare numbers only when joined by '>'
        ("[0] > [7]", 3, None),  # nothing in range
        ("I cannot rank these passages.", 3, None),
        ("", 3, None),
    ],
)
def test_parse_ranking(text, n, expected):
    assert parse_ranking(text, n) == expected


def test_parse_ranking_is_always_a_permutation():
    order = parse_ranking("[5] > [5] > [2] > [12] > [1] > [2]", 6)
    assert sorted(order) == list(range(6)) and order[:3] == [4, 1, 0]


@pytest.mark.parametrize(
    "text, expected",
    [
        (' "What causes TP53 mutations?"', "What causes TP53 mutations?"),
        ("Query: statins and muscle pain\nmore text", "statins and muscle pain"),
        ("\n\n1. Search query: bm25 saturation", "bm25 saturation"),
        ("- does aspirin prevent stroke", "does aspirin prevent stroke"),
        ("The passage is:", None),  # a preamble, not a query
        ("what is the answer to the question what is the answer to the question", None),  # a loop
        ("  \n ", None),
        ("ok", None),
        (" ".join(["word"] * 3 + [f"w{i}" for i in range(60)]), None),  # too long
    ],
)
def test_parse_query(text, expected):
    assert parse_query(text) == expected


def test_parse_triplet_from_json_with_chatter():
    text = 'Here you go:\n{"query": "q about x", "positive": "x is y", "negative": "z is w"}\nBye'
    assert parse_triplet(text) == ("q about x", "x is y", "z is w")


def test_parse_triplet_from_labels():
    text = "Query: how do cats purr\nPositive passage: Cats purr by...\nit is the larynx.\nNegative: Dogs bark."
    assert parse_triplet(text) == ("how do cats purr", "Cats purr by...\nit is the larynx.", "Dogs bark.")


@pytest.mark.parametrize(
    "text",
    ['{"query": "q about x", "positive": "same", "negative": "same"}', '{"query": "q", "positive": "a"}',
     '{"query": "abc", "positive": 3, "negative": "b"}', "no structure at all", '{"query": broken json'],
)
def test_parse_triplet_invalid(text):
    assert parse_triplet(text) is None
