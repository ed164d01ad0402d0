"""Micro-batching: concurrent single-item calls from many threads become one batched call.

A model answers a batch of 8 in little more time than a batch of 1, so a server that receives
requests one by one gains throughput by holding each for a few milliseconds and running the
ones that arrived together as a batch. One worker thread owns the batched function: while it
runs a batch, new items queue up and go together in the next one.

Example:
    >>> batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=8, max_wait_ms=5)
    >>> batcher.submit(21)
    42
    >>> batcher.close()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Pending:
    item: Any
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Collect concurrent `submit(item)` calls into `fn(items) -> results`, one result per item, in order.

    `key(item)` keeps items apart: only items with equal keys share a batch (generation requests
    with different sampling settings cannot run as one `generate` call). Batches run one at a
    time, oldest first; an exception raised by `fn` reaches every caller of that batch and no other.

    Example:
        >>> b = MicroBatcher(lambda xs: [len(x) for x in xs], key=type)
        >>> b.submit_many(["ab", "abc"])
        [2, 3]
        >>> b.close()
    """

    def __init__(self, fn: Callable[[list], Sequence], max_batch: int = 32, max_wait_ms: float = 5,
                 key: Callable[[Any], Hashable] | None = None):  # fmt: skip
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.fn, self.max_batch, self.max_wait, self.key = fn, max_batch, max_wait_ms / 1000, key
        self.batches = self.items = 0  # counters, for health endpoints and tests
        self._groups: dict[Hashable, list[_Pending]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None  # started on first use, so building one is free

    def submit(self, item: Any) -> Any:
        """Block until the batch holding `item` has run; return its result or raise the batch's exception."""
        return self._enqueue(item).future.result()

    def submit_many(self, items: Sequence) -> list:
        """`submit` for several items at once: all are queued before waiting, so they can share a batch."""
        pending = [self._enqueue(item) for item in items]
        return [p.future.result() for p in pending]

    def close(self) -> None:
        """Stop the worker after the batch it is running; items still queued fail with RuntimeError."""
        with self._cond:
            self._closed = True
            left = [p for group in self._groups.values() for p in group]
            self._groups.clear()
            self._cond.notify_all()
        for p in left:
            p.future.set_exception(RuntimeError("the batcher was closed before this item ran"))
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _enqueue(self, item: Any) -> _Pending:
        pending = _Pending(item)
        k = self.key(item) if self.key else None
        with self._cond:
            if self._closed:
                raise RuntimeError("submit on a closed MicroBatcher")
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="irlm-microbatcher", daemon=True)
                self._worker.start()
            group = self._groups.setdefault(k, [])
            group.append(pending)
            # the worker sleeps until the oldest group's deadline; wake it only when that may change
            if len(group) == 1 or len(group) >= self.max_batch:
                self._cond.notify()
        return pending

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Pending] | None:
        """The oldest group once it is full or its first item has waited max_wait; None once closed."""
        with self._cond:
            while not self._closed:
                if not self._groups:
                    self._cond.wait()
                    continue
                k, group = min(self._groups.items(), key=lambda kv: kv[1][0].arrived)
                wait = group[0].arrived + self.max_wait - time.monotonic()
                if len(group) >= self.max_batch or wait <= 0:
                    batch, rest = group[: self.max_batch], group[self.max_batch :]
                    if rest:
                        self._groups[k] = rest
                    else:
                        del self._groups[k]
                    return batch
                self._cond.wait(wait)
            return None

    def _run(self, batch: list[_Pending]) -> None:
        try:
            results = list(self.fn([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batched function returned {len(results)} results for {len(batch)} items")
        except BaseException as e:  # every caller of the batch must wake up, whatever went wrong
            for p in batch:
                p.future.set_exception(e)
            return
        finally:
            self.batches, self.items = self.batches + 1, self.items + len(batch)
        for p, r in zip(batch, results):
            p.future.set_result(r)


def closing_lifespan(batcher: MicroBatcher, cancel: threading.Event | None = None):
    """A FastAPI lifespan that stops the batcher's worker thread when the app shuts down.

    With `cancel` (a generator's), the batch running at shutdown is told to stop at its next step, so the
    server exits at once instead of finishing a long generation whose clients are already gone.
    """

    @asynccontextmanager
    async def lifespan(app):
        yield
        if cancel is not None:
            cancel.set()
        batcher.close()
        if cancel is not None:
            cancel.clear()  # the generator itself stays usable (tests build several apps around one)

    return lifespan
