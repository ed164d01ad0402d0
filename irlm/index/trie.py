"""A prefix tree over token ids that knows nothing of models (Self-Retrieval's constrained decoding).

The tree is never built as nodes. The distinct sequences are kept sorted, one after another, in
one flat token array; the entries that start with a prefix are then one contiguous run of them,
and the run below a prefix + [t] is found by binary search on the tokens at that depth:

    tokens[starts[i] : starts[i + 1]]      distinct sequence i, in sorted order
    keys[key_start[i] : key_start[i + 1]]  its keys, in input order

A node is (lo, hi, depth): the sequences lo .. hi - 1 share their first `depth` tokens. That is
2 bytes per token with a vocabulary under 65,536 (4 above), plus 8 per distinct sequence, against
7 per node for a tree of flat arrays and hundreds for nested dicts.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from itertools import chain
from pathlib import Path

import numpy as np

from irlm.errors import InputError
from irlm.utils import atomic_path

ARRAYS = ("tokens", "starts", "key_start")
Node = tuple[int, int, int]  # (lo, hi, depth)


def common_prefix(a, b) -> int:
    """How many leading tokens two sequences share (os.path.commonprefix compares element-wise).

    Example:
        >>> common_prefix([5, 6, 7], [5, 6, 9, 1])
        2
    """
    return len(os.path.commonprefix([a, b]))


class TokenTrie:
    """Token-id sequences (with string keys), sorted in flat arrays; look-ups are binary searches.

    Example:
        >>> t = TokenTrie.build([[5, 6], [5, 7, 1]], keys=["a", "b"])
        >>> t.allowed([5]), t.keys_under([5, 7]), t.unique_completion([5, 7])
        ([6, 7], ['b'], [1])
    """

    def __init__(self, arrays: dict[str, np.ndarray], keys: list[str], corpus_tokens: int):
        for name in ARRAYS:
            setattr(self, name, arrays[name])
        self.keys, self.corpus_tokens = keys, corpus_tokens

    @classmethod
    def build(cls, sequences, keys: list[str] | None = None) -> TokenTrie:
        """Trie over `sequences` (lists of non-negative ints); keys default to "0", "1", ...

        An empty sequence is refused rather than made the root's entry: it would match every prefix.
        Equal sequences are stored once and keep all their keys, in input order.
        """
        seqs = [[int(t) for t in s] for s in sequences]
        keys = [str(i) for i in range(len(seqs))] if keys is None else [str(k) for k in keys]
        _check(seqs, keys)
        distinct, entry_of_key = _dedupe(seqs)
        order = np.argsort(entry_of_key, kind="stable")  # keys grouped by sequence, input order within
        lengths = np.array([len(s) for s in distinct], dtype=np.int64)
        total = int(lengths.sum())
        flat = np.fromiter(chain.from_iterable(distinct), np.int64, total)
        arrays = {
            "tokens": flat.astype(np.uint16 if total == 0 or flat.max() < 2**16 else np.int32),
            "starts": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if total < 2**31 else np.int64),
            "key_start": np.concatenate([[0], np.cumsum(np.bincount(entry_of_key, minlength=len(distinct)))])
            .astype(np.int32),
        }
        return cls(arrays, [keys[i] for i in order], sum(map(len, seqs)))

    def __len__(self) -> int:
        """Number of distinct entries."""
        return len(self.starts) - 1

    @property
    def root(self) -> Node:
        return (0, len(self), 0)

    def _at(self, i: int, depth: int) -> int:
        """Token `depth` of sequence i (the caller knows it is that long)."""
        return int(self.tokens[int(self.starts[i]) + depth])

    def _length(self, i: int) -> int:
        return int(self.starts[i + 1] - self.starts[i])

    def _branching(self, n: Node) -> int:
        """The first sequence of n that continues past its prefix: the one equal to it sorts first."""
        lo, hi, depth = n
        return lo + 1 if lo < hi and self._length(lo) == depth else lo

    def child(self, n: Node, t: int) -> Node | None:
        """The node below n along token t, or None."""
        lo, hi, depth = n
        a = self._branching(n)
        at = lambda i: self._at(i, depth)  # noqa: E731  (sorted within n: the bisect key)
        i = bisect_left(range(a, hi), t, key=at)
        if i == hi - a or at(a + i) != t:
            return None
        return (a + i, a + bisect_right(range(a, hi), t, lo=i, key=at), depth + 1)

    def node(self, prefix) -> Node | None:
        """The node reached by `prefix` from the root, or None when no entry starts so."""
        n: Node | None = self.root if len(self) else None
        for t in prefix:
            if n is None:
                return None
            n = self.child(n, int(t))
        return n

    def children(self, n: Node) -> list[int]:
        """Sorted distinct tokens out of node n."""
        lo, hi, depth = n
        a = self._branching(n)
        if a == hi:
            return []
        col = self.tokens[self.starts[a:hi] + depth].astype(np.int64)  # sorted: the sequences share the prefix
        return col[np.flatnonzero(np.diff(col, prepend=-1))].tolist()

    def allowed(self, prefix) -> list[int]:
        """Sorted tokens that continue some entry after `prefix`; [] at a leaf or an unknown prefix."""
        n = self.node(prefix)
        return [] if n is None else self.children(n)

    def ends_at(self, n: Node) -> bool:
        """Whether n's prefix is itself an entry."""
        return self._branching(n) > n[0]

    def keys_at(self, prefix) -> list[str]:
        """Keys of the entries equal to `prefix`."""
        n = self.node(prefix)
        return self._keys(n[0], n[0] + 1) if n is not None and self.ends_at(n) else []

    def is_terminal(self, prefix) -> bool:
        """Whether `prefix` is itself an entry (it may still continue into longer ones)."""
        n = self.node(prefix)
        return n is not None and self.ends_at(n)

    def keys_under(self, prefix) -> list[str]:
        """Keys of every entry that starts with `prefix`, in token order (an entry before its extensions)."""
        n = self.node(prefix)
        return [] if n is None else self._keys(n[0], n[1])

    def completion(self, n: Node) -> list[int] | None:
        """The rest of the one distinct entry below n ([] if n is it), else None."""
        lo, hi, depth = n
        if hi - lo != 1:
            return None
        return self.tokens[int(self.starts[lo]) + depth : int(self.starts[hi])].tolist()

    def unique_completion(self, prefix) -> list[int] | None:
        """The rest of the one distinct entry that continues `prefix` ([] if `prefix` is it), else None.

        Once a prefix identifies a single entry, every remaining token has only one allowed value:
        a decoder copies them from the corpus instead of running the model for each.
        """
        n = self.node(prefix)
        return None if n is None else self.completion(n)

    def prefix_allowed_tokens_fn(self, prompt_len: int, eos_token_id: int | None = None):
        """A callable for transformers' `generate(prefix_allowed_tokens_fn=...)`.

        The generated part is input_ids[prompt_len:] (prompts left-padded to one width). Where that
        part is an entry, eos is allowed beside its continuations, so entries that prefix longer
        ones stay reachable; where it has left the trie (or a finished row is being padded), only
        eos is. Without eos_token_id those cases give [], which transformers rejects as unsatisfiable.

        Example:
            >>> fn = TokenTrie.build([[5, 6]]).prefix_allowed_tokens_fn(prompt_len=2, eos_token_id=0)
            >>> fn(0, [9, 9, 5]), fn(0, [9, 9, 5, 6])
            ([6], [0])
        """
        eos = [] if eos_token_id is None else [eos_token_id]

        def allowed_tokens(batch_id: int, input_ids) -> list[int]:
            generated = input_ids[prompt_len:]
            n = self.node(generated.tolist() if hasattr(generated, "tolist") else generated)
            if n is None:
                return eos
            nxt = self.children(n)
            return sorted(set(nxt + eos)) if self.ends_at(n) else nxt

        return allowed_tokens

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (key strings not counted: they are the caller's ids)."""
        return sum(getattr(self, name).nbytes for name in ARRAYS)

    @property
    def bytes_per_token(self) -> float:
        """nbytes per token inserted (duplicates included); 0.0 for an empty trie."""
        return self.nbytes / self.corpus_tokens if self.corpus_tokens else 0.0

    def save(self, path) -> None:
        """One .npz of plain arrays at exactly `path`, written atomically; loads without pickle."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{name: getattr(self, name) for name in ARRAYS}, keys=np.array(self.keys, dtype=str),
                     corpus_tokens=np.array(self.corpus_tokens, dtype=np.int64))  # fmt: skip

    @classmethod
    def load(cls, path) -> TokenTrie:
        if not Path(path).is_file():
            raise InputError("no trie file here", path=str(path))
        with np.load(path, allow_pickle=False) as z:
            missing = [name for name in (*ARRAYS, "keys", "corpus_tokens") if name not in z.files]
            if missing:
                raise InputError(f"not a trie file: missing {', '.join(missing)}", path=str(path))
            return cls({name: z[name] for name in ARRAYS}, z["keys"].tolist(), int(z["corpus_tokens"]))

    def _keys(self, lo: int, hi: int) -> list[str]:
        """Keys of the sequences lo .. hi - 1."""
        return self.keys[int(self.key_start[lo]) : int(self.key_start[hi])]


def join_entries(titles: list[list[int]], passages: list[list[int]], sep: int) -> list[list[int]]:
    """title + [sep] + passage for each document, so one trie constrains the title, then its passages.

    After `title + [sep]` the trie allows exactly the first tokens of that title's passages. `sep`
    must occur in no title, or a title's end could not be told apart.

    Example:
        >>> join_entries([[3], [4]], [[7, 8], [9]], sep=0)
        [[3, 0, 7, 8], [4, 0, 9]]
    """
    if len(titles) != len(passages):
        raise InputError(f"{len(titles)} titles but {len(passages)} passages")
    for i, title in enumerate(titles):
        if sep in title:
            raise InputError(f"title {i} holds the separator token {sep}")
    return [list(t) + [sep] + list(p) for t, p in zip(titles, passages)]


def _check(seqs: list[list[int]], keys: list[str]) -> None:
    if len(keys) != len(seqs):
        raise InputError(f"{len(seqs)} sequences but {len(keys)} keys")
    for i, s in enumerate(seqs):
        if not s:
            raise InputError(f"sequence {i} is empty: a trie entry needs at least one token")
        if min(s) < 0:
            raise InputError(f"sequence {i} holds a negative token id {min(s)}")


def _dedupe(seqs: list[list[int]]) -> tuple[list[list[int]], np.ndarray]:
    """Sorted distinct sequences and, for each input sequence, the index of its distinct one."""
    order = sorted(range(len(seqs)), key=seqs.__getitem__)
    distinct: list[list[int]] = []
    entry_of_key = np.empty(len(seqs), dtype=np.int64)
    for i in order:
        if not distinct or distinct[-1] != seqs[i]:
            distinct.append(seqs[i])
        entry_of_key[i] = len(distinct) - 1
    return distinct, entry_of_key
