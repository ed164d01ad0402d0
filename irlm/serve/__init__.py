"""HTTP search service: one retriever, loaded once, behind `POST /search`, `POST /encode`, the OpenAI-compatible
`POST /v1/embeddings` and `GET /v1/models`, `GET /health` and `GET /metrics` (Prometheus text, prometheus_client);
on a writable server `POST /documents` and `DELETE /documents/{id}` change a BM25, dense or hybrid index live.

Concurrent requests are micro-batched: the searches that arrive together become one `retriever.search`
call, the texts to embed one encoder call. A cheap retriever (BM25) skips the batcher: its search, far
shorter than the HTTP round trip, runs at once on the event loop (the fast path). Bad input is a 4xx with
`{"error": message, "field": name}`, never a 500; under /v1/ errors take OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so OpenAI clients raise their usual exception classes.

One module per concern: `schemas` (request bodies), `limits` (bounds, the key, errors), `store` (live
document updates), `metrics` (Prometheus), `lane` (the batcher and the fast path), `app` (build_app, the
routes, serve).

Example:
    >>> serve("runs/scifact-bm25", port=8001)  # doctest: +SKIP
    $ curl -s localhost:8001/search -H 'content-type: application/json' -d '{"query": "vitamin D", "k": 5}'
    {"results": [{"id": "4983", "score": 21.3}, ...]}
"""

from irlm.serve.app import build_app, open_retriever, serve
from irlm.serve.lane import SearchLane, is_cheap
from irlm.serve.limits import APIError, Limits
from irlm.serve.store import doc_count

__all__ = ["APIError", "Limits", "SearchLane", "build_app", "doc_count", "is_cheap", "open_retriever", "serve"]
