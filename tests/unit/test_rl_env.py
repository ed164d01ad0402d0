"""SelectiveIndex: what each step re-encodes, in-place updates, the rolling schedule, and ranks."""

from __future__ import annotations

import numpy as np
import pytest

from irlm.methods.reasoning.env import SelectiveIndex

IDS = [f"d{i}" for i in range(10)]


class Policy:
    """A stand-in encoder whose embeddings move when `shift` changes, like a model being trained."""

    def __init__(self, dim=4, seed=0):
        self.base = np.random.default_rng(seed).normal(size=(len(IDS), dim)).astype(np.float32)
        self.shift = np.zeros(dim, dtype=np.float32)
        self.calls: list[list[str]] = []

    def __call__(self, ids):
        self.calls.append(list(ids))
        return np.stack([self.base[IDS.index(i)] + self.shift for i in ids])


def test_refresh_reencodes_positives_neighbours_and_a_rolling_slice():
    policy = Policy()
    env = SelectiveIndex(IDS, policy, top_k=2, slice_size=3)
    assert policy.calls == [IDS] and env.encoded == 10
    query = policy.base[[7]]  # nearest to d7 itself
    _, near = env.index.search(query, 2)
    done = env.refresh(query, ["d9"])
    assert done[0] == "d9" and set(near[0]) <= set(done)
    assert {"d0", "d1", "d2"} <= set(done)  # the first rolling slice
    assert set(done) <= {"d9", *near[0], "d0", "d1", "d2"}  # and nothing else
    assert len(done) == len(set(done)) and env.encoded == 10 + len(done)
    env.refresh(query, ["d9"])
    assert {"d3", "d4", "d5"} <= set(policy.calls[-1])  # the schedule moved on


def test_updates_are_in_place_and_stale_rows_stay_stale():
    policy = Policy()
    env = SelectiveIndex(IDS, policy, top_k=1, slice_size=1)
    policy.shift[:] = 5.0
    done = env.refresh(policy.base[[3]] + 5.0, ["d3"])
    fresh, stale = env.index.rows(done), [r for r in range(10) if IDS[r] not in done]
    np.testing.assert_allclose(env.index.vectors[fresh], policy.base[fresh] + 5.0, rtol=1e-6)
    np.testing.assert_allclose(env.index.vectors[stale], policy.base[stale], rtol=1e-6)
    env.full_refresh()
    np.testing.assert_allclose(env.index.vectors, policy.base + 5.0, rtol=1e-6)


def test_every_document_is_refreshed_within_the_schedule():
    policy = Policy()
    env = SelectiveIndex(IDS, policy, top_k=1, slice_size=4)
    seen = set()
    for _ in range(3):  # ceil(10 / 4) steps cover the corpus
        seen |= set(env.refresh(policy.base[[0]], ["d0"]))
    assert seen == set(IDS)


def test_ranks_of_positives():
    vecs = np.eye(4, dtype=np.float32)
    env = SelectiveIndex(["a", "b", "c", "d"], lambda ids: vecs[["abcd".index(i) for i in ids]], top_k=1)
    q = np.array([[1.0, 0.5, 0.2, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    assert env.ranks(q, ["a", "d"]) == [1, 1]
    assert env.ranks(q, ["b", "c"]) == [2, 4]  # ties (0 = 0 for a, b, c) count against the positive
    assert env.ranks(q, ["c", "a"]) == [3, 4]
    with pytest.raises(Exception, match="unknown id"):
        env.ranks(q[:1], ["zz"])


def test_equal_scores_rank_the_positive_last():
    """Collapsed embeddings (every score equal) must earn the worst rank, not the best: ties go against it."""
    env = SelectiveIndex(IDS, lambda ids: np.ones((len(ids), 4), dtype=np.float32), top_k=1)
    q = np.ones((3, 4), dtype=np.float32)
    assert env.ranks(q, ["d0", "d5", "d9"]) == [10, 10, 10]
