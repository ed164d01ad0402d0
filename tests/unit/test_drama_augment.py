"""Pure helpers of DRAMA augmentation: sentences, rank splits, sliding windows, the output file."""

from __future__ import annotations

import random

from irlm.methods.drama.augment import (
    apply_window,
    crop_query,
    finished_units,
    sample_units,
    skipped_path,
    sliding_windows,
    split_ranks,
    split_sentences,
)
from irlm.types import Document


def test_split_sentences_keeps_abbreviations_and_decimals_together():
    text = "The dose was 2.5 mg. It worked in 3 of 4 cases! Why? (See Table 1.) Done"
    assert split_sentences(text) == ["The dose was 2.5 mg.", "It worked in 3 of 4 cases!", "Why?", "(See Table 1.) Done"]


def test_crop_query_is_a_long_enough_sentence_and_seeded():
    doc = Document("d", "Short one. This sentence has quite a few words in it. Tiny. Another long sentence with words here.")
    picks = {crop_query(doc, random.Random(s), min_words=5) for s in range(20)}
    assert picks == {"This sentence has quite a few words in it.", "Another long sentence with words here."}
    assert crop_query(doc, random.Random(1)) == crop_query(doc, random.Random(1))
    assert crop_query(Document("e", "Too short. Also."), random.Random(0), min_words=5) is None


def test_split_ranks():
    ranked = [f"d{i}" for i in range(1, 21)]
    pos, neg = split_ranks(ranked, n_positives=2, negatives_from=10, top_k=20)
    assert pos == ["d1", "d2"] and neg == [f"d{i}" for i in range(10, 21)]
    pos, neg = split_ranks(ranked[:3], n_positives=1, negatives_from=2, top_k=20)
    assert pos == ["d1"] and neg == ["d2", "d3"]
    assert split_ranks([], 1, 5, 20) == ([], [])


def test_sliding_windows_cover_everything_back_to_front():
    assert sliding_windows(20, 20, 10) == [(0, 20)]
    assert sliding_windows(20, 8, 4) == [(12, 20), (8, 16), (4, 12), (0, 8)]
    assert sliding_windows(5, 8, 4) == [(0, 5)]
    for n, w, s in [(20, 6, 3), (17, 5, 2), (9, 4, 4)]:
        wins = sliding_windows(n, w, s)
        assert wins[0][1] == n and wins[-1][0] == 0 and all(e - b <= w for b, e in wins)


def test_windowed_reranking_brings_the_best_to_the_top():
    """With a perfect ranker over windows of 4 (stride 2), the best 2 of 12 end up first, as in RankGPT."""
    rng = random.Random(0)
    items = list(range(12))
    rng.shuffle(items)
    order = items
    for start, end in sliding_windows(len(order), 4, 2):
        window = order[start:end]
        perm = sorted(range(len(window)), key=lambda i: window[i])  # smaller = better
        order = apply_window(order, start, end, perm)
    assert order[:2] == [0, 1] and sorted(order) == list(range(12))


def test_apply_window():
    assert apply_window(list("abcdef"), 2, 5, [2, 0, 1]) == list("abecdf")


def test_sample_units_is_deterministic_and_bounded():
    ids = [f"d{i}" for i in range(50)]
    assert sample_units(ids, 10, 1) == sample_units(list(reversed(ids)), 10, 1)
    assert len(set(sample_units(ids, 10, 1))) == 10 and sample_units(ids, 10, 1) != sample_units(ids, 10, 2)
    assert sorted(sample_units(ids, 99, 1)) == sorted(ids)


def test_finished_units_drops_a_torn_last_line(tmp_path):
    out = tmp_path / "a.jsonl"
    out.write_text('{"id": "d1", "query": "x"}\n{"id": "d2", "query": "y"}\n{"id": "d3", "qu')
    skipped_path(out).write_text('{"id": "d9", "reason": "no usable query"}\n')
    assert finished_units(out) == {"d1", "d2", "d9"}
    assert out.read_text().endswith('"y"}\n')  # the torn line is gone, so appends start on a clean line
