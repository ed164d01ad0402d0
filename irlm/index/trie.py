"""A prefix tree over token ids that knows nothing of models (Self-Retrieval's constrained decoding).

Stored as flat arrays in breadth-first order, so the children of a node are one contiguous run
of node ids, sorted by token:

    token[n]        the token on the edge into node n (root: -1)
    first_child[n]  children of n are first_child[n] .. first_child[n + 1] - 1
    entries[n]      distinct sequences at or below n (1 means the prefix is unique)
    key_start[n]    keys ending exactly at n are key_ids[key_start[n] : key_start[n + 1]]

That is 16 bytes per node plus 4 per key, against hundreds for nested dicts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from irlm.errors import InputError


class TokenTrie:
    def __init__(self, token, first_child, entries, key_start, key_ids, keys: list[str], corpus_tokens: int):
        self.token, self.first_child, self.entries = token, first_child, entries
        self.key_start, self.key_ids, self.keys = key_start, key_ids, keys
        self.corpus_tokens = corpus_tokens

    @classmethod
    def build(cls, sequences: list[list[int]], keys: list[str] | None = None) -> TokenTrie:
        """Example: TokenTrie.build([[5, 6], [5, 7]]).allowed([5]) == [6, 7]."""
        keys = [str(i) for i in range(len(sequences))] if keys is None else [str(k) for k in keys]
        if len(keys) != len(sequences):
            raise InputError(f"{len(sequences)} sequences but {len(keys)} keys")
        if any(len(s) == 0 for s in sequences):
            raise InputError("a trie entry must hold at least one token")
        order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
        uniq: list[tuple] = []
        owners: list[list[int]] = []
        for i in order:
            seq = tuple(int(t) for t in sequences[i])
            if uniq and uniq[-1] == seq:
                owners[-1].append(i)
            else:
                uniq.append(seq)
                owners.append([i])
        arrays = _breadth_first(uniq, owners)
        return cls(*arrays, keys, sum(len(s) for s in sequences))

    def __len__(self) -> int:
        return int(self.entries[0]) if len(self.entries) else 0

    def node(self, prefix) -> int | None:
        n = 0
        for t in prefix:
            lo, hi = self.first_child[n], self.first_child[n + 1]
            i = lo + int(np.searchsorted(self.token[lo:hi], t))
            if i >= hi or self.token[i] != t:
                return None
            n = i
        return n

    def allowed(self, prefix) -> list[int]:
        """Tokens that continue some entry after `prefix`; [] at a leaf or an unknown prefix."""
        n = self.node(prefix)
        if n is None:
            return []
        return self.token[self.first_child[n] : self.first_child[n + 1]].tolist()

    def keys_at(self, prefix) -> list[str]:
        n = self.node(prefix)
        return [] if n is None else self._keys(n)

    def is_terminal(self, prefix) -> bool:
        return bool(self.keys_at(prefix))

    def keys_under(self, prefix) -> list[str]:
        """Keys of every entry that starts with `prefix`, in token order."""
        n = self.node(prefix)
        if n is None:
            return []
        out, stack = [], [n]
        while stack:
            m = stack.pop()
            out += self._keys(m)
            stack += range(self.first_child[m + 1] - 1, self.first_child[m] - 1, -1)
        return out

    def unique_completion(self, prefix) -> list[int] | None:
        """The rest of the one entry that continues `prefix`, or None if there are several or none.

        Decoding uses this to copy a passage from the corpus once its prefix identifies it, instead
        of generating (and scoring) tokens that have only one possible value.
        """
        n = self.node(prefix)
        if n is None or self.entries[n] != 1:
            return None
        rest = []
        while self.first_child[n + 1] > self.first_child[n]:  # one entry below: a single path
            n = int(self.first_child[n])
            rest.append(int(self.token[n]))
        return rest

    def _keys(self, n: int) -> list[str]:
        return [self.keys[i] for i in self.key_ids[self.key_start[n] : self.key_start[n + 1]]]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.token, self.first_child, self.entries, self.key_start, self.key_ids))

    @property
    def bytes_per_token(self) -> float:
        return self.nbytes / max(self.corpus_tokens, 1)

    def prefix_allowed_tokens_fn(self, prompt_len: int, eos_token_id: int | None = None):
        """For transformers' generate(prefix_allowed_tokens_fn=...): the generated part is
        input_ids[prompt_len:]; a finished or unknown prefix allows only eos (if given)."""
        done = [eos_token_id] if eos_token_id is not None else []

        def fn(batch_id, input_ids) -> list[int]:
            return self.allowed(input_ids[prompt_len:].tolist()) or done

        return fn

    def save(self, path) -> None:
        np.savez(path, token=self.token, first_child=self.first_child, entries=self.entries,
                 key_start=self.key_start, key_ids=self.key_ids, keys=np.array(self.keys, dtype=str),
                 corpus_tokens=np.array(self.corpus_tokens))  # fmt: skip

    @classmethod
    def load(cls, path) -> TokenTrie:
        if not Path(path).is_file():
            raise InputError(f"no trie file at {path}")
        z = np.load(path, allow_pickle=False)
        return cls(z["token"], z["first_child"], z["entries"], z["key_start"], z["key_ids"],
                   z["keys"].tolist(), int(z["corpus_tokens"]))  # fmt: skip


def _breadth_first(uniq: list[tuple], owners: list[list[int]]):
    """Arrays of the trie over sorted distinct sequences. Each frontier item is a node and the run
    [lo, hi) of sequences sharing its prefix; sorting makes every node's children contiguous runs."""
    token, entries, children_of, keys_of = [-1], [len(uniq)], [], []
    frontier, depth = [(0, len(uniq))], 0
    while frontier:
        nxt = []
        for lo, hi in frontier:
            ends_here = lo < hi and len(uniq[lo]) == depth  # the shortest sorts first
            keys_of.append(owners[lo] if ends_here else [])
            start = lo + ends_here
            runs = _runs(uniq, start, hi, depth)
            children_of.append(len(runs))
            for a, b in runs:
                token.append(uniq[a][depth])
                entries.append(b - a)
                nxt.append((a, b))
        frontier, depth = nxt, depth + 1
    key_start = np.zeros(len(token) + 1, dtype=np.int32)
    key_start[1:] = np.cumsum([len(k) for k in keys_of])
    key_ids = np.array([i for k in keys_of for i in k], dtype=np.int32)
    return (np.array(token, dtype=np.int32), _first_child(children_of), np.array(entries, dtype=np.int32),
            key_start, key_ids)  # fmt: skip


def _first_child(children_of: list[int]) -> np.ndarray:
    """first_child[n] = 1 + children of all nodes before n (breadth-first ids); one extra end slot."""
    out = np.empty(len(children_of) + 1, dtype=np.int32)
    out[0] = 1
    out[1:] = 1 + np.cumsum(children_of)
    return out


def _runs(uniq: list[tuple], lo: int, hi: int, depth: int) -> list[tuple[int, int]]:
    """Maximal runs of uniq[lo:hi] sharing the token at `depth` (all are longer than depth)."""
    runs, a = [], lo
    for i in range(lo + 1, hi + 1):
        if i == hi or uniq[i][depth] != uniq[a][depth]:
            runs.append((a, i))
            a = i
    return runs


def join_entries(titles: list[list[int]], passages: list[list[int]], sep: int) -> list[list[int]]:
    """title + [sep] + passage for each document: one trie constrains the title, then its passages."""
    return [list(t) + [sep] + list(p) for t, p in zip(titles, passages)]
