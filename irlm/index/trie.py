"""A prefix tree over token ids that knows nothing of models (Self-Retrieval's constrained decoding).

Nodes are numbered level by level (breadth first) and children sorted by token, so the children of
any node are one contiguous run of ids, and so is everything at one depth below a node. Then a few
flat arrays hold the whole tree:

    token[n]            the token on the edge into node n (the root's slot is unused)
    first_child[n]      children of n are the ids first_child[n] .. first_child[n + 1] - 1
    single[n]           exactly one distinct entry passes through n (its rest can be copied)
    terminal[i]         sorted ids of the nodes where an entry ends
    key_start[i]        keys of terminal[i] are keys[key_ids[key_start[i] : key_start[i + 1]]]

That is 7 bytes per node with a vocabulary under 65,536 (9 above), plus 8 per distinct entry and
4 per key, against hundreds of bytes per node for nested dicts.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np

from irlm.errors import InputError
from irlm.utils import atomic_path

ARRAYS = ("token", "first_child", "single", "terminal", "key_start", "key_ids")


class TokenTrie:
    """Token-id sequences (with string keys) in flat arrays; look-ups walk from the root.

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
        Equal sequences share one terminal node that keeps all their keys, in input order.
        """
        seqs = [[int(t) for t in s] for s in sequences]
        keys = [str(i) for i in range(len(seqs))] if keys is None else [str(k) for k in keys]
        _check(seqs, keys)
        distinct, entry_of_key = _dedupe(seqs)
        token, depth, parent, last = _preorder(distinct)
        arrays = _level_order(token, depth, parent, last, entry_of_key)
        return cls(arrays, keys, sum(map(len, seqs)))

    def __len__(self) -> int:
        """Number of distinct entries."""
        return len(self.terminal)

    def child(self, n: int, t: int) -> int | None:
        """The child of node n along token t, or None."""
        lo, hi = int(self.first_child[n]), int(self.first_child[n + 1])
        i = lo + int(np.searchsorted(self.token[lo:hi], t))
        return i if i < hi and self.token[i] == t else None

    def node(self, prefix) -> int | None:
        """The node reached by `prefix` from the root (0 for []), or None when no entry starts so."""
        n: int | None = 0
        for t in prefix:
            n = self.child(n, int(t))
            if n is None:
                return None
        return n

    def children(self, n: int) -> list[int]:
        """Tokens out of node n, sorted."""
        return self.token[self.first_child[n] : self.first_child[n + 1]].tolist()

    def allowed(self, prefix) -> list[int]:
        """Sorted tokens that continue some entry after `prefix`; [] at a leaf or an unknown prefix."""
        n = self.node(prefix)
        return [] if n is None else self.children(n)

    def keys_at(self, prefix) -> list[str]:
        """Keys of the entries equal to `prefix`."""
        n = self.node(prefix)
        return [] if n is None else self._keys(*self._terminal_range(n, n + 1))

    def is_terminal(self, prefix) -> bool:
        """Whether `prefix` is itself an entry (it may still continue into longer ones)."""
        n = self.node(prefix)
        return n is not None and self._ends_at(n)

    def keys_under(self, prefix) -> list[str]:
        """Keys of every entry that starts with `prefix`: shorter entries first, then in token order.

        Below a node, each depth is one contiguous run of ids, so this costs one step per level
        rather than one per node.
        """
        n = self.node(prefix)
        out: list[str] = []
        lo, hi = (n, n + 1) if n is not None else (0, 0)
        while lo < hi:
            out += self._keys(*self._terminal_range(lo, hi))
            lo, hi = int(self.first_child[lo]), int(self.first_child[hi])
        return out

    def unique_completion(self, prefix) -> list[int] | None:
        """The rest of the one distinct entry that continues `prefix` ([] if `prefix` is it), else None.

        Once a prefix identifies a single entry, every remaining token has only one allowed value:
        a decoder copies them from the corpus instead of running the model for each.
        """
        n = self.node(prefix)
        if n is None or not self.single[n]:
            return None
        rest = []
        while self.first_child[n + 1] > self.first_child[n]:  # a single entry below: one path, no branch
            n = int(self.first_child[n])
            rest.append(int(self.token[n]))
        return rest

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
            return sorted(set(nxt + eos)) if self._ends_at(n) else nxt

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

    def _terminal_range(self, lo: int, hi: int) -> tuple[int, int]:
        """Indices into `terminal` of the terminal nodes with ids in [lo, hi)."""
        a, b = np.searchsorted(self.terminal, [lo, hi])
        return int(a), int(b)

    def _ends_at(self, n: int) -> bool:
        a, b = self._terminal_range(n, n + 1)
        return a < b

    def _keys(self, a: int, b: int) -> list[str]:
        """Keys of terminal[a:b]."""
        ids = self.key_ids[self.key_start[a] : self.key_start[b]]
        return [self.keys[i] for i in ids]


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


def _preorder(distinct: list[list[int]]):
    """Depth-first node arrays over sorted distinct sequences: token, depth and parent per node
    (root 0), and the last node of each sequence.

    In sorted order each sequence adds nodes only past its common prefix with the one before,
    so the work is linear in the tokens that are not shared.
    """
    shared = [_common_prefix(a, b) for a, b in zip([[]] + distinct, distinct)]
    new = np.array([len(s) - c for s, c in zip(distinct, shared)], dtype=np.int64)  # >= 1: sorted and distinct
    first = 1 + np.cumsum(new) - new  # id of each sequence's first new node
    total = 1 + int(new.sum())
    token = np.zeros(total, dtype=np.int64)
    token[1:] = np.fromiter(chain.from_iterable(s[c:] for s, c in zip(distinct, shared)), np.int64, total - 1)
    depth = np.zeros(total, dtype=np.int64)
    depth[1:] = np.arange(1, total) - np.repeat(first, new) + np.repeat(np.array(shared) + 1, new)
    parent = np.arange(-1, total - 1)  # within a sequence's new nodes each hangs from the one before
    parent[first] = _branch_points(distinct, shared, first)
    return token, depth, parent, first + new - 1


def _branch_points(distinct: list[list[int]], shared: list[int], first: np.ndarray) -> list[int]:
    """For each sequence, the node its new part hangs from: the node at depth `shared` on its path."""
    path, out = [0], []  # path[d]: node at depth d on the latest sequence
    for s, c, f in zip(distinct, shared, first.tolist()):
        del path[c + 1 :]
        out.append(path[c])
        path.extend(range(f, f + len(s) - c))
    return out


def _level_order(token, depth, parent, last, entry_of_key) -> dict[str, np.ndarray]:
    """Renumber depth-first nodes level by level, children sorted by token, and build the arrays.

    A stable sort by depth is enough: within one depth the depth-first order already lists nodes
    by their parent's order, then by token, because the sequences were sorted.
    """
    order = np.argsort(depth, kind="stable")
    new_id = np.empty_like(order)
    new_id[order] = np.arange(len(order))
    parent = new_id[parent[order[1:]]]  # non-decreasing, so each node's children are one run
    first_child = np.concatenate([[1], 1 + np.cumsum(np.bincount(parent, minlength=len(order)))])
    ends = new_id[last]
    key_ids = np.argsort(ends[entry_of_key], kind="stable")  # keys grouped by node, input order within
    terminal, per_node = np.unique(ends[entry_of_key][key_ids], return_counts=True)
    index = np.int32 if len(order) < 2**31 else np.int64
    return {
        "token": token[order].astype(np.uint16 if token.max() < 2**16 else np.int32),  # halves most vocabularies
        "first_child": first_child.astype(index),
        "single": _single(parent, depth[order], ends, len(order)),
        "terminal": terminal.astype(index),
        "key_start": np.concatenate([[0], np.cumsum(per_node)]).astype(np.int32),
        "key_ids": key_ids.astype(np.int32),
    }


def _single(parent: np.ndarray, depth: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """Whether exactly one distinct entry ends at or below each node: counts summed up level by level."""
    count = np.zeros(n, dtype=np.int64)
    count[ends] = 1
    starts = np.searchsorted(depth, np.arange(depth.max() + 2))  # each depth is a run of ids
    for d in range(int(depth.max()), 0, -1):
        lo, hi = starts[d], starts[d + 1]
        np.add.at(count, parent[lo - 1 : hi - 1], count[lo:hi])  # parent[i - 1] is node i's parent
    return count == 1


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
