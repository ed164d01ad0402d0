"""The search lane: how a search or an embedding is run. Through the micro-batcher (one worker thread
owns the model; concurrent requests become one call), or, for a cheap retriever (BM25), at once on the
event loop: the fast-path route, and SearchLane, an ASGI middleware that answers a well-formed POST
/search before FastAPI's routing."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from irlm.batching import MicroBatcher
from irlm.errors import InputError
from irlm.serve.limits import APIError, Limits
from irlm.serve.metrics import Metrics
from irlm.serve.schemas import SearchRequest

CHEAP_KINDS = ("bm25",)  # retrievers whose search costs far less than a request: the fast path


def ranked(scores: dict[str, float], k: int) -> list[dict]:
    best = sorted(scores.items(), key=lambda kv: -kv[1])[:k]  # stable: ties keep the retriever's order
    return [{"id": doc_id, "score": score} for doc_id, score in best]


def is_cheap(retriever) -> bool:
    """A search far shorter than an HTTP round trip (BM25: about 0.1 ms on SciFact), so batching gains nothing."""
    return retriever.kind in CHEAP_KINDS


def batch_runner(retriever, encoder):
    """One function for every batch, so a single worker thread owns the model (and its tokenizer, which is not
    safe to share between threads): items are (op, text, k) and a batch holds one op only (the batcher's key).
    An encode item's result is (float32 vector, the number of tokens the encoder read)."""

    def run(items: list[tuple[str, str, int]]) -> list:
        op = items[0][0]
        texts = [text for _, text, _ in items]
        if op == "search":
            # one call at the largest k, then each request cut to its own k
            run = retriever.search({str(n): t for n, t in enumerate(texts)}, max(k for *_, k in items))
            return [ranked(run.get(str(n), {}), k) for n, (*_, k) in enumerate(items)]
        encode, prefix = ((encoder.encode_queries, encoder.config.query_prefix) if op == "query" else
                          (encoder.encode_corpus, encoder.config.passage_prefix))  # fmt: skip
        tokens = [len(ids) for ids in encoder.tokenize([prefix + t for t in texts])]  # what encode reads
        return list(zip(encode(texts, progress=False), tokens))

    return run


class SearchLane:
    """ASGI middleware just outside the router, for a cheap retriever: a well-formed JSON POST /search is
    answered here, without FastAPI's routing, dependency solving and response encoding (two thirds of a BM25
    request's time in the server). Anything else goes on to the app unchanged, the body replayed: other routes,
    a body that does not validate or breaks a limit, a search that raises. So every error keeps its one shape,
    made in one place. The guards (key, body size) and Measure sit outside this one and see every request."""

    def __init__(self, app, retriever, limits: Limits, metrics: Metrics):
        self.app, self.retriever, self.limits, self.metrics = app, retriever, limits, metrics

    async def __call__(self, scope, receive, send):
        if not (scope["type"] == "http" and scope["path"] == "/search" and scope["method"] == "POST"
                and sized_json(scope)):  # fmt: skip
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        results = self.answer(body)
        if results is None:
            return await self.app(scope, replay(body, receive), send)
        await JSONResponse({"results": results})(scope, receive, send)

    def answer(self, body: bytes) -> list[dict] | None:
        """The ranked results, or None where the app must answer (and explain) instead."""
        try:
            return search_directly(self.retriever, self.limits, self.metrics, SearchRequest.model_validate_json(body))
        except (ValidationError, APIError):
            return None


def search_directly(retriever, limits: Limits, metrics: Metrics, req: SearchRequest) -> list[dict]:
    """One search on the calling thread, for the lane and the fast-path route alike; bad input is an APIError."""
    limits.check_search(req)
    try:
        run = retriever.search({"q": req.query}, req.k)
    except InputError as e:
        raise APIError(400, str(e)) from e
    metrics.direct.inc()
    return ranked(run.get("q", {}), req.k)


def sized_json(scope) -> bool:
    """A JSON body with a Content-Length, which BodyLimit has checked before any byte is read (a chunked
    body is counted while it is read, and only the app knows how to answer a 413 raised then)."""
    names = [name for name, _ in scope["headers"]]
    if any(names.count(n) > 1 for n in (b"content-type", b"authorization", b"content-length")):
        return False  # a repeated header: the guards and the app may read different copies; the app decides
    headers = dict(scope["headers"])
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return kind == b"application/json" and b"content-length" in headers


async def read_body(receive) -> bytes:
    parts, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: let the app see an empty body
            break
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(parts)


def replay(body: bytes, receive):
    """A `receive` that gives `body` once, then what the connection says next (a disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def submit(batcher: MicroBatcher, items: list[tuple[str, str, int]]) -> list:
    try:
        return batcher.submit_many(items)
    except InputError as e:
        raise APIError(400, str(e)) from e
