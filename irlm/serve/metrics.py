"""The service's Prometheus metrics (prometheus_client, in a registry of the app's own): requests by
endpoint and status, latency histograms, the batcher's counters read at scrape time, and Measure, the
outermost ASGI middleware that times every request, the guards' refusals included."""

from __future__ import annotations

import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily

from irlm.batching import MicroBatcher

# metric labels; /documents/{id} is one more, any other path counts as "other"
ROUTES = ("/search", "/encode", "/health", "/metrics", "/v1/embeddings", "/v1/models", "/documents")
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


class BatchCounts:
    """A prometheus_client collector reading the batcher's own counters at scrape time."""

    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    def describe(self) -> list:
        return []  # nothing to check for name clashes up front; collect() runs only when scraped

    def collect(self):
        yield CounterMetricFamily("irlm_batches", "Batched calls to the retriever or encoder.", self.batcher.batches)
        yield CounterMetricFamily("irlm_batched_items", "Queries and texts those calls held.", self.batcher.items)


class Metrics:
    """Request counters and latency histograms in a registry of this app's own (prometheus_client)."""

    def __init__(self, batcher: MicroBatcher):
        prometheus_client.disable_created_metrics()  # no *_created series: the names and lines stay as before
        self.registry = CollectorRegistry()
        self.requests = Counter("irlm_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("irlm_request_seconds", "Time from request to response.", ["endpoint"],
                                 buckets=BUCKETS, registry=self.registry)  # fmt: skip
        self.direct = Counter("irlm_direct_searches", "Searches answered on the fast path, without the batcher.",
                              registry=self.registry)  # fmt: skip
        self.registry.register(BatchCounts(batcher))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def route_label(path: str) -> str:
    """The metric label of a path: bounded values, so a document id never becomes a label of its own."""
    if path in ROUTES:
        return path
    return "/documents/{id}" if path.startswith("/documents/") else "other"


class Measure:
    """ASGI middleware: every request's endpoint, status and latency into `metrics` (outermost, so the guards'
    401 and 413 count too). Plain ASGI: FastAPI's `@app.middleware` costs a task and a stream per request."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = route_label(scope["path"])
        start, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(endpoint, status, time.perf_counter() - start)
