"""TokenTrie on plain integer lists: exact look-ups, a dict-of-dicts reference on every prefix,
unique completion, keys, memory, save/load, the generate() hook, and constrained random walks that
may only ever produce corpus entries."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import irlm.index.trie as trie_module
from irlm.errors import InputError
from irlm.index.trie import ARRAYS, TokenTrie, join_entries

SEQS = [[5, 6], [5, 7, 1], [5, 6, 8], [9], [5, 7, 2]]
KEYS = ["a", "b", "c", "d", "e"]


def reference(seqs: list[list[int]], keys: list[str]) -> dict:
    """Nested dicts; the keys of the entries ending at a node sit under the name 'end'."""
    root: dict = {}
    for s, k in zip(seqs, keys):
        node = root
        for t in s:
            node = node.setdefault(t, {})
        node.setdefault("end", []).append(k)
    return root


def ref_node(root: dict, prefix: list[int]) -> dict | None:
    node = root
    for t in prefix:
        if t not in node:
            return None
        node = node[t]
    return node


def ref_keys(node: dict) -> list[str]:
    return node.get("end", []) + [k for t, child in node.items() if t != "end" for k in ref_keys(child)]


def ref_entries(node: dict) -> list[list[int]]:
    """Distinct token sequences at or below a node, relative to it."""
    here = [[]] if "end" in node else []
    return here + [[t] + rest for t, child in node.items() if t != "end" for rest in ref_entries(child)]


def test_exact_lookups():
    t = TokenTrie.build(SEQS, KEYS)
    assert t.allowed([]) == [5, 9]
    assert t.allowed([5]) == [6, 7] and t.allowed([5, 7]) == [1, 2] and t.allowed([5, 6]) == [8]
    assert t.allowed([5, 6, 8]) == [] and t.allowed([9]) == [] and t.allowed([4]) == []
    assert t.node([]) == t.root == (0, 5, 0) and t.node([5, 7]) == (2, 4, 2)  # sorted: 56, 568, 571, 572, 9
    assert t.node([5, 9]) is None and t.node([5, 6, 8, 1]) is None
    assert t.allowed([70000]) == [] and t.allowed([-1]) == []  # outside the stored uint16 range
    assert t.keys_under([]) == ["a", "c", "b", "e", "d"]  # token order, an entry before its extensions
    assert t.keys_under([5]) == ["a", "c", "b", "e"] and t.keys_under([5, 7]) == ["b", "e"]
    assert t.keys_under([5, 7, 3]) == [] and t.keys_under([4]) == []
    assert t.keys_at([5, 6]) == ["a"] and t.keys_at([5]) == [] and t.keys_at([8]) == []
    assert t.is_terminal([5, 6]) and t.is_terminal([9])
    assert not t.is_terminal([5, 7]) and not t.is_terminal([]) and not t.is_terminal([3])
    assert len(t) == 5 and t.tokens.dtype == np.uint16


def test_unique_completion():
    t = TokenTrie.build(SEQS, KEYS)
    assert t.unique_completion([5, 7, 1]) == []  # complete and alone
    assert t.unique_completion([]) is None and t.unique_completion([5]) is None and t.unique_completion([5, 7]) is None
    assert t.unique_completion([5, 6]) is None  # [5, 6] is an entry and also the prefix of [5, 6, 8]
    assert t.unique_completion([5, 6, 8]) == [] and t.unique_completion([9]) == []
    assert t.unique_completion([3]) is None and t.unique_completion([5, 6, 8, 1]) is None
    long = TokenTrie.build([[1, 2, 3, 4, 5], [1, 9]])
    assert long.unique_completion([1, 2]) == [3, 4, 5] and long.unique_completion([1]) is None
    assert TokenTrie.build([[4, 4, 4]]).unique_completion([]) == [4, 4, 4]


def test_duplicates_share_one_node_and_keep_every_key():
    t = TokenTrie.build([[1, 2], [3], [1, 2], [1, 2, 5], [1, 2]], ["x", "z", "y", "w", "v"])
    assert t.keys_at([1, 2]) == ["x", "y", "v"]  # input order
    assert t.keys_under([1]) == ["x", "y", "v", "w"] and len(t) == 3
    assert TokenTrie.build([[1, 2], [1, 2]]).unique_completion([1]) == [2]  # one distinct sequence, two keys
    assert t.unique_completion([1]) is None


def test_bad_input_and_the_empty_trie():
    with pytest.raises(InputError, match="sequence 1 is empty"):
        TokenTrie.build([[1], []])
    with pytest.raises(InputError, match="2 sequences but 1 keys"):
        TokenTrie.build([[1], [2]], ["k"])
    with pytest.raises(InputError, match="negative token id -3"):
        TokenTrie.build([[1, -3]])
    empty = TokenTrie.build([])
    assert empty.allowed([]) == [] and empty.keys_under([]) == [] and empty.unique_completion([]) is None
    assert len(empty) == 0 and empty.bytes_per_token == 0.0 and not empty.is_terminal([])


def test_default_keys_and_large_vocabularies():
    t = TokenTrie.build([np.array([150000, 2]), (150000, 1), [65535], [65535, 0]])  # any int sequences
    assert t.keys_under([]) == ["2", "3", "1", "0"] and t.allowed([150000]) == [1, 2]
    assert t.allowed([]) == [65535, 150000] and t.allowed([65535]) == [0]
    assert t.tokens.dtype == np.int32  # no longer fits uint16
    assert TokenTrie.build([[65535], [65535, 0]]).allowed([]) == [65535]  # the top uint16 token is a token


@pytest.mark.parametrize("seed", [1, 2])
def test_agrees_with_a_dict_reference_on_every_prefix(seed):
    rng = random.Random(seed)
    seqs = [[rng.randrange(6) for _ in range(rng.randint(1, 7))] for _ in range(200)]
    keys = [f"k{i}" for i in range(len(seqs))]
    t, ref = TokenTrie.build(seqs, keys), reference(seqs, keys)
    prefixes = {tuple(s[:i]) for s in seqs for i in range(len(s) + 1)}
    prefixes |= {p + (rng.randrange(8),) for p in list(prefixes)}  # some of these leave the trie
    for p in map(list, prefixes):
        node = ref_node(ref, p)
        if node is None:
            assert t.node(p) is None and t.allowed(p) == [] and t.keys_under(p) == []
            continue
        assert t.allowed(p) == sorted(k for k in node if k != "end")
        assert t.keys_at(p) == node.get("end", []) and t.is_terminal(p) == ("end" in node)
        assert sorted(t.keys_under(p)) == sorted(ref_keys(node))
        below = ref_entries(node)
        assert t.unique_completion(p) == (below[0] if len(below) == 1 else None)


def test_sorted_layout():
    """The distinct sequences lie sorted, one after another; each key sits with its own sequence."""
    rng = random.Random(3)
    seqs = [[rng.randrange(5) for _ in range(rng.randint(1, 6))] for _ in range(100)]
    t = TokenTrie.build(seqs, [f"k{i}" for i in range(len(seqs))])
    stored = [t.tokens[t.starts[i] : t.starts[i + 1]].tolist() for i in range(len(t))]
    assert stored == sorted(map(list, {tuple(s) for s in seqs})) and t.starts[0] == 0 and t.starts[-1] == len(t.tokens)
    for i, seq in enumerate(stored):
        assert t.keys[t.key_start[i] : t.key_start[i + 1]] == [f"k{n}" for n, s in enumerate(seqs) if s == seq]


def test_constrained_walks_only_produce_corpus_entries():
    rng = random.Random(7)
    seqs = [[rng.randrange(4) for _ in range(rng.randint(1, 9))] for _ in range(300)]  # heavy prefix sharing
    t, corpus = TokenTrie.build(seqs), {tuple(s) for s in seqs}
    produced, jumps = set(), 0
    for _ in range(3000):
        prefix: list[int] = []
        while True:
            rest = t.unique_completion(prefix)
            if rest is not None and rng.random() < 0.5:
                prefix += rest  # copied from the corpus
                jumps += 1
                break
            options = t.allowed(prefix)
            if not options or (t.is_terminal(prefix) and rng.random() < 0.3):
                break
            prefix.append(rng.choice(options))
        assert tuple(prefix) in corpus
        produced.add(tuple(prefix))
    assert jumps > 100 and len(produced) > len(corpus) // 2  # the walks did explore


def test_memory_accounting():
    t = TokenTrie.build([[1, 2, 3], [1, 2, 4], [7, 8], [7, 8]], ["p0", "p1", "p2", "p3"])
    tokens, entries = 8, 3  # 123, 124, 78: duplicates are stored once
    expected = 2 * tokens + 4 * (entries + 1) + 4 * (entries + 1)
    assert t.nbytes == expected == sum(getattr(t, name).nbytes for name in ARRAYS) > 0
    assert t.bytes_per_token == pytest.approx(expected / 10)  # duplicates count as inserted tokens
    rng = random.Random(0)
    passages = [[rng.randrange(49152) for _ in range(100)] for _ in range(500)]
    assert TokenTrie.build(passages).bytes_per_token < 2.1  # passage-length entries: about 2 bytes a token


def test_save_load_round_trip(tmp_path):
    rng = random.Random(5)
    seqs = [[rng.randrange(300) for _ in range(rng.randint(1, 12))] for _ in range(50)] + [[1, 2], [1, 2]]
    t = TokenTrie.build(seqs, [f"doc-{i}" for i in range(len(seqs))])
    path = tmp_path / "sub" / "title.trie"
    t.save(path)
    assert path.is_file() and list(path.parent.iterdir()) == [path]  # no .npz appended, no temporary left
    back = TokenTrie.load(path)
    for name in ARRAYS:
        a, b = getattr(t, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.keys == t.keys and back.corpus_tokens == t.corpus_tokens and back.nbytes == t.nbytes
    assert all(back.keys_under(s[:1]) == t.keys_under(s[:1]) for s in seqs)
    with pytest.raises(InputError, match="no trie file"):
        TokenTrie.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(InputError, match="not a trie file"):
        TokenTrie.load(tmp_path / "other.npz")


def test_two_level_entries():
    sep = 0
    entries = join_entries([[11, 12], [11, 12], [13], [11]], [[21, 22], [23], [24], [25]], sep)
    assert entries[0] == [11, 12, sep, 21, 22]
    t = TokenTrie.build(entries, ["p0", "p1", "p2", "p3"])
    assert t.allowed([]) == [11, 13] and t.allowed([11]) == [sep, 12] and t.allowed([11, 12]) == [sep]
    assert t.allowed([11, 12, sep]) == [21, 23] and t.allowed([13, sep]) == [24]
    assert t.keys_under([11, 12, sep]) == ["p0", "p1"] and t.unique_completion([11, 12, sep, 21]) == [22]
    with pytest.raises(InputError, match="title 1 holds the separator"):
        join_entries([[1], [2, sep]], [[3], [4]], sep)
    with pytest.raises(InputError, match="2 titles but 1 passages"):
        join_entries([[1], [2]], [[3]], sep)


def test_prefix_allowed_tokens_fn_on_tensors():
    sep, eos = 0, 99
    t = TokenTrie.build(join_entries([[11, 12], [11, 12], [13]], [[21, 22], [23], [24]], sep) + [[13, sep]])
    fn = t.prefix_allowed_tokens_fn(prompt_len=3, eos_token_id=eos)
    prompt = [7, 7, 7]
    assert fn(0, torch.tensor(prompt)) == [11, 13]
    assert fn(1, torch.tensor(prompt + [11, 12, sep])) == [21, 23]
    assert fn(0, torch.tensor(prompt + [13, sep])) == [24, eos]  # an entry that also continues
    assert fn(0, torch.tensor(prompt + [13, sep, 24])) == [eos]  # finished
    assert fn(0, torch.tensor(prompt + [42])) == [eos] and fn(0, torch.tensor(prompt + [13, sep, 24, eos])) == [eos]
    assert fn(0, prompt + [11]) == [12]  # plain lists work too
    bare = t.prefix_allowed_tokens_fn(prompt_len=3)
    assert bare(0, torch.tensor(prompt + [13, sep])) == [24] and bare(0, torch.tensor(prompt + [42])) == []


def test_prefix_allowed_tokens_fn_inside_transformers_processor():
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    t = TokenTrie.build([[3, 4], [3, 5], [6]])
    proc = PrefixConstrainedLogitsProcessor(t.prefix_allowed_tokens_fn(prompt_len=2, eos_token_id=0), num_beams=1)
    ids = torch.tensor([[1, 1, 3], [1, 1, 6]])
    out = proc(ids, torch.zeros(2, 8))
    assert [torch.isfinite(row).nonzero().flatten().tolist() for row in out] == [[4, 5], [0]]


def test_module_imports_no_model_library():
    tree = ast.parse(Path(trie_module.__file__).read_text())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"torch", "transformers"}


def test_common_prefix_counts_the_leading_tokens_two_sequences_share():
    from irlm.index.trie import common_prefix

    assert common_prefix([5, 6, 7], [5, 6, 9, 1]) == 2
    assert common_prefix([5, 6], [5, 6, 7]) == 2 and common_prefix([1], [2]) == 0 and common_prefix([], [3]) == 0
