"""MicroBatcher: concurrent submits share one call, each caller gets its own result or its batch's error."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from irlm.batching import MicroBatcher


class Recorder:
    """A batched function that remembers every batch it saw and is slow enough for others to queue."""

    def __init__(self, delay: float = 0.05, fail_on=None):
        self.delay, self.fail_on, self.seen = delay, fail_on, []
        self.lock = threading.Lock()

    def __call__(self, items: list) -> list:
        with self.lock:
            self.seen.append(list(items))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [(x, "done") for x in items]


def run_threads(batcher: MicroBatcher, items: list) -> list:
    """Submit each item from its own thread, all released at once; results (or exceptions) in item order."""
    start = threading.Barrier(len(items))

    def call(x):
        start.wait()
        try:
            return batcher.submit(x)
        except Exception as e:
            return e

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


def test_concurrent_submits_share_a_batch_and_results_go_back_to_their_caller():
    fn = Recorder()
    with MicroBatcher(fn, max_batch=32, max_wait_ms=20) as b:
        out = run_threads(b, list(range(8)))
    assert out == [(i, "done") for i in range(8)]
    assert max(len(s) for s in fn.seen) > 1 and len(fn.seen) < 8
    assert sorted(x for s in fn.seen for x in s) == list(range(8))  # each item ran exactly once
    assert (b.batches, b.items) == (len(fn.seen), 8)


def test_max_batch_caps_every_call():
    fn = Recorder(delay=0.01)
    with MicroBatcher(fn, max_batch=3, max_wait_ms=50) as b:
        assert run_threads(b, list(range(10))) == [(i, "done") for i in range(10)]
    assert max(len(s) for s in fn.seen) <= 3


def test_an_exception_reaches_only_the_callers_of_its_batch():
    fn = Recorder(delay=0.02, fail_on="bad")
    with MicroBatcher(fn, max_wait_ms=20, key=lambda x: x == "bad" or x == "also-failing") as b:
        out = run_threads(b, ["a", "bad", "b", "also-failing", "c"])
    bad_batch = next(s for s in fn.seen if "bad" in s)
    for item, result in zip(["a", "bad", "b", "also-failing", "c"], out):
        if item in bad_batch:
            assert isinstance(result, ValueError) and "bad item bad" in str(result)
        else:
            assert result == (item, "done")
    # the batcher keeps working after a failed batch
    with MicroBatcher(fn) as b:
        with pytest.raises(ValueError):
            b.submit("bad")
        assert b.submit("fine") == ("fine", "done")


def test_keys_keep_batches_apart():
    fn = Recorder()
    with MicroBatcher(fn, max_wait_ms=20, key=lambda x: x % 2) as b:
        out = run_threads(b, list(range(8)))
    assert out == [(i, "done") for i in range(8)]
    assert all(len({x % 2 for x in s}) == 1 for s in fn.seen)
    assert max(len(s) for s in fn.seen) > 1


def test_submit_many_queues_everything_before_waiting():
    fn = Recorder(delay=0.0)
    with MicroBatcher(fn, max_wait_ms=20) as b:
        assert b.submit_many([1, 2, 3]) == [(1, "done"), (2, "done"), (3, "done")]
    assert fn.seen == [[1, 2, 3]]


def test_wrong_number_of_results_is_an_error_not_a_hang():
    with MicroBatcher(lambda xs: xs[:-1]) as b:
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            b.submit("x")


def test_closed_batcher_refuses_and_fails_queued_items():
    gate = threading.Event()
    b = MicroBatcher(lambda xs: [gate.wait(5) and x for x in xs], max_wait_ms=0)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(b.submit, "first")
        time.sleep(0.05)  # "first" is now running and blocked on the gate
        second = pool.submit(b.submit, "second")
        time.sleep(0.05)
        closer = pool.submit(b.close)
        time.sleep(0.05)
        gate.set()
        closer.result(5)
        assert first.result(5) == "first"
        with pytest.raises(RuntimeError, match="closed"):
            second.result(5)
    with pytest.raises(RuntimeError, match="closed"):
        b.submit("late")
