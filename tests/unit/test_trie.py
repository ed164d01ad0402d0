"""TokenTrie on plain integer lists: look-ups against a dict-of-dicts reference, unique completion,
keys, save/load, and constrained random walks that may only ever produce corpus entries."""

from __future__ import annotations

import random

import pytest
import torch

from irlm.errors import InputError
from irlm.index.trie import TokenTrie, join_entries

SEQS = [[5, 6], [5, 7, 1], [5, 6, 8], [9], [5, 7, 2]]
KEYS = ["a", "b", "c", "d", "e"]


def reference(seqs):
    root: dict = {}
    for s in seqs:
        node = root
        for t in s:
            node = node.setdefault(t, {})
    return root


def ref_allowed(root, prefix):
    node = root
    for t in prefix:
        if t not in node:
            return []
        node = node[t]
    return sorted(node)


def test_lookups():
    t = TokenTrie.build(SEQS, KEYS)
    assert t.allowed([]) == [5, 9]
    assert t.allowed([5]) == [6, 7] and t.allowed([5, 7]) == [1, 2]
    assert t.allowed([5, 6, 8]) == [] and t.allowed([4]) == [] and t.node([5, 9]) is None
    assert t.keys_under([5]) == ["a", "c", "b", "e"] and t.keys_under([5, 7]) == ["b", "e"]
    assert t.keys_at([5, 6]) == ["a"] and t.is_terminal([5, 6]) and not t.is_terminal([5, 7])
    assert len(t) == 5


def test_unique_completion():
    t = TokenTrie.build(SEQS, KEYS)
    assert t.unique_completion([5, 7, 1]) == []  # complete and alone
    assert t.unique_completion([]) is None and t.unique_completion([5, 7]) is None
    assert t.unique_completion([5, 6]) is None  # [5, 6] is an entry and the prefix of [5, 6, 8]
    assert t.unique_completion([9]) == [] and t.unique_completion([3]) is None
    long = TokenTrie.build([[1, 2, 3, 4, 5], [1, 9]])
    assert long.unique_completion([1, 2]) == [3, 4, 5] and long.unique_completion([1]) is None


def test_duplicates_keep_every_key_and_bad_input_is_refused():
    t = TokenTrie.build([[1, 2], [1, 2], [3]], ["x", "y", "z"])
    assert t.keys_at([1, 2]) == ["x", "y"] and len(t) == 2
    assert t.unique_completion([1]) == [2]  # one distinct sequence, two documents
    with pytest.raises(InputError, match="at least one token"):
        TokenTrie.build([[1], []])
    with pytest.raises(InputError, match="2 sequences but 1 keys"):
        TokenTrie.build([[1], [2]], ["k"])
    empty = TokenTrie.build([])
    assert empty.allowed([]) == [] and len(empty) == 0


def test_agrees_with_a_dict_reference_on_every_prefix():
    rng = random.Random(1)
    seqs = [[rng.randrange(6) for _ in range(rng.randint(1, 7))] for _ in range(200)]
    t, ref = TokenTrie.build(seqs), reference(seqs)
    for s in seqs:
        for i in range(len(s) + 1):
            assert t.allowed(s[:i]) == ref_allowed(ref, s[:i])


def test_constrained_walks_only_produce_corpus_entries():
    rng = random.Random(7)
    seqs = [[rng.randrange(4) for _ in range(rng.randint(1, 9))] for _ in range(300)]  # heavy prefix sharing
    t, corpus = TokenTrie.build(seqs), {tuple(s) for s in seqs}
    for _ in range(2000):
        prefix: list[int] = []
        while True:
            rest = t.unique_completion(prefix)
            if rest is not None and rng.random() < 0.5:
                prefix += rest  # copied from the corpus
                break
            options = t.allowed(prefix)
            if not options or (t.is_terminal(prefix) and rng.random() < 0.3):
                break
            prefix.append(rng.choice(options))
        assert tuple(prefix) in corpus


def test_memory_and_round_trip(tmp_path):
    seqs = [[1, 2, 3], [1, 2, 4], [7, 8]]
    t = TokenTrie.build(seqs, ["p0", "p1", "p2"])
    assert t.nbytes == sum(a.nbytes for a in (t.token, t.first_child, t.entries, t.key_start, t.key_ids))
    assert t.bytes_per_token == pytest.approx(t.nbytes / 8)
    t.save(tmp_path / "trie.npz")
    back = TokenTrie.load(tmp_path / "trie.npz")
    assert back.keys_under([]) == t.keys_under([]) == ["p0", "p1", "p2"]
    assert back.allowed([1, 2]) == [3, 4] and back.bytes_per_token == t.bytes_per_token


def test_two_level_entries_and_generate_hook():
    sep = 0
    entries = join_entries([[11, 12], [11, 12], [13]], [[21, 22], [23], [24]], sep)
    t = TokenTrie.build(entries, ["p0", "p1", "p2"])
    assert t.allowed([11, 12]) == [sep] and t.allowed([11, 12, sep]) == [21, 23]
    fn = t.prefix_allowed_tokens_fn(prompt_len=3, eos_token_id=99)
    assert fn(0, torch.tensor([7, 7, 7, 11, 12, sep])) == [21, 23]
    assert fn(0, torch.tensor([7, 7, 7, 13, sep, 24])) == [99]  # finished
    assert fn(0, torch.tensor([7, 7, 7, 42])) == [99]  # off the trie
