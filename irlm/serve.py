"""HTTP search service: one retriever, loaded once, behind `POST /search`, `POST /encode`, the OpenAI-compatible
`POST /v1/embeddings` and `GET /v1/models`, `GET /health` and `GET /metrics` (Prometheus text, prometheus_client);
on a writable server `POST /documents` and `DELETE /documents/{id}` change a BM25, dense or hybrid index live.

Concurrent requests are micro-batched: the searches that arrive together become one `retriever.search`
call, the texts to embed one encoder call. A cheap retriever (BM25) skips the batcher: its search, far
shorter than the HTTP round trip, runs at once on the event loop (the fast path). Bad input is a 4xx with
`{"error": message, "field": name}`, never a 500; under /v1/ errors take OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so OpenAI clients raise their usual exception classes.

Example:
    >>> serve("runs/scifact-bm25", port=8001)  # doctest: +SKIP
    $ curl -s localhost:8001/search -H 'content-type: application/json' -d '{"query": "vitamin D", "k": 5}'
    {"results": [{"id": "4983", "score": 21.3}, ...]}
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import prometheus_client
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException

from irlm.batching import MicroBatcher, closing_lifespan
from irlm.data.beir import ID_RULE, id_problem, text_problem
from irlm.errors import InputError
from irlm.models.generator.server import (
    MAX_BODY_BYTES,
    WRONG_KEY,
    BodyLimit,
    KeyGuard,
    bearer_ok,
    docs_pages,
    field_path,
    is_loopback,
    read_api_key,
)
from irlm.types import Document
from irlm.utils import WriterLock, check_replaceable, restore_interrupted

log = logging.getLogger(__name__)

# metric labels; /documents/{id} is one more, any other path counts as "other"
ROUTES = ("/search", "/encode", "/health", "/metrics", "/v1/embeddings", "/v1/models", "/documents")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
CHEAP_KINDS = ("bm25",)  # retrievers whose search costs far less than a request: the fast path
READ_ONLY = ("this server is read-only: start it with --writable (irlm serve) or writable=True (build_app) to "
             "add, replace or delete documents")  # fmt: skip
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


class APIError(Exception):
    """An error the client should see as `{"error": message, "field": name}` with this status, or under /v1/
    as OpenAI's `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.code = status, message, field, code

    def render(self, openai: bool = False) -> JSONResponse:
        if not openai:
            return JSONResponse({"error": self.message, "field": self.field}, status_code=self.status)
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        body = {"message": self.message, "type": kind, "param": self.field, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)

    def response(self):
        """An ASGI app answering with this error in the shape of the request's path (for the ASGI guards)."""

        async def answer(scope, receive, send):
            await self.render(is_openai(scope["path"]))(scope, receive, send)

        return answer


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must contain text, not only whitespace")
    return text


Text = Annotated[str, Field(min_length=1), AfterValidator(not_blank)]


class SearchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")  # strict: "5" is not a number; "top_k" is a typo
    query: Text
    k: int = Field(10, ge=1)


class EncodeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    texts: list[Text] = Field(min_length=1)
    kind: Literal["query", "passage"] = "query"


def no_token_ids(value):
    """OpenAI's API also takes token ids; this server embeds text only."""
    if isinstance(value, list) and any(isinstance(v, (int, list)) and not isinstance(v, bool) for v in value):
        raise ValueError("token-id input is not supported: send a string or a list of strings")
    return value


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. `input_type` is this server's own field (OpenAI clients send it through
    `extra_body`): "query" (the default) embeds with the encoder's query prefix, "passage" with its passage prefix."""

    model_config = ConfigDict(strict=True, extra="forbid")
    input: Text | list[Text] = Field(min_length=1)
    model: str
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None  # OpenAI's end-user id: accepted, unused
    input_type: Literal["query", "passage"] = "query"

    _token_ids = field_validator("input", mode="before")(no_token_ids)


def valid_id(value: str) -> str:
    """The BEIR reader's id rule: an id that breaks it would break the TREC files `irlm search --out` writes."""
    problem = id_problem(value)
    if problem:
        raise ValueError(f"{ID_RULE}; {problem}")
    return value


def storable(text: str | None) -> str | None:
    """No lone surrogate (a JSON escape such as \\ud800): the index could not be saved as UTF-8."""
    problem = text_problem(text) if text else None
    if problem:
        raise ValueError(problem)
    return text


class NewDocument(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    id: Annotated[str, AfterValidator(valid_id)]
    text: Annotated[Text, AfterValidator(storable)]
    title: Annotated[str | None, AfterValidator(storable)] = None


def unique_ids(docs: list[NewDocument]) -> list[NewDocument]:
    seen = set()
    for doc in docs:
        if doc.id in seen:
            raise ValueError(f"id '{doc.id}' appears twice; send each document once")
        seen.add(doc.id)
    return docs


class DocumentsRequest(BaseModel):
    """Documents to add; one whose id is already indexed replaces it."""

    model_config = ConfigDict(strict=True, extra="forbid")
    documents: Annotated[list[NewDocument], Field(min_length=1), AfterValidator(unique_ids)]


@dataclass
class Limits:
    """This app's bounds on a request; beyond them the answer is 413 (too large) or 422 (k)."""

    max_query_chars: int = 2048
    max_k: int = 1000
    max_texts: int = 64
    max_text_chars: int = 32768  # passages run longer than queries; the encoder truncates to its max_length
    max_documents: int = 256  # per update: each one re-indexes (BM25) and saves the whole index, so batch them

    def check_search(self, req: SearchRequest) -> None:
        if len(req.query) > self.max_query_chars:
            raise APIError(413, f"query: {len(req.query)} characters; the limit is {self.max_query_chars}", "query")
        if req.k > self.max_k:
            raise APIError(422, f"k: {req.k} is more than the limit of {self.max_k}", "k")

    def check_encode(self, req: EncodeRequest) -> None:
        if len(req.texts) > self.max_texts:
            raise APIError(413, f"texts: {len(req.texts)} texts; the limit is {self.max_texts}", "texts")
        for n, text in enumerate(req.texts):
            if len(text) > self.max_text_chars:
                raise APIError(413, f"texts.{n}: {len(text)} characters; the limit is {self.max_text_chars}",
                               "texts")  # fmt: skip

    def check_documents(self, req: DocumentsRequest) -> None:
        if len(req.documents) > self.max_documents:
            raise APIError(413, f"documents: {len(req.documents)} documents; the limit is {self.max_documents}",
                           "documents")  # fmt: skip
        for n, doc in enumerate(req.documents):
            for name, text in (("text", doc.text), ("title", doc.title or "")):
                if len(text) > self.max_text_chars:
                    raise APIError(413, f"documents.{n}.{name}: {len(text)} characters; the limit is "
                                        f"{self.max_text_chars}", "documents")  # fmt: skip

    def check_inputs(self, texts: list[str]) -> None:
        """/v1/embeddings' bounds: 400, as OpenAI answers an input over its limits."""
        if len(texts) > self.max_texts:
            raise APIError(400, f"input: {len(texts)} texts; the limit is {self.max_texts}", "input")
        for n, text in enumerate(texts):
            if len(text) > self.max_text_chars:
                raise APIError(400, f"input.{n}: {len(text)} characters; the limit is {self.max_text_chars}",
                               "input")  # fmt: skip


def find_encoder(retriever):
    """The dense encoder of a dense retriever or of a hybrid's dense part; None when there is none."""
    if getattr(retriever, "encoder", None) is not None:
        return retriever.encoder
    for part in getattr(retriever, "parts", []):
        if (encoder := find_encoder(part)) is not None:
            return encoder
    return None


def doc_count(retriever) -> int:
    if hasattr(retriever, "parts"):  # hybrid: the parts index the same corpus
        return max(doc_count(p) for p in retriever.parts)
    if hasattr(retriever, "index"):
        return len(retriever.index)
    return len(retriever)  # Self-Retrieval and any retriever without an index: the Retriever protocol's size


def ranked(scores: dict[str, float], k: int) -> list[dict]:
    best = sorted(scores.items(), key=lambda kv: -kv[1])[:k]  # stable: ties keep the retriever's order
    return [{"id": doc_id, "score": score} for doc_id, score in best]


def is_cheap(retriever) -> bool:
    """A search far shorter than an HTTP round trip (BM25: about 0.1 ms on SciFact), so batching gains nothing."""
    return getattr(retriever, "kind", None) in CHEAP_KINDS


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


def leaves(retriever) -> list:
    """The retrievers a hybrid fuses (recursively); [retriever] for any other."""
    if getattr(retriever, "kind", None) == "hybrid":
        return [leaf for part in retriever.parts for leaf in leaves(part)]
    return [retriever]


def update_refusal(retriever, encoder) -> str | None:
    """Why the served documents cannot change over HTTP; None for BM25, dense and hybrids of those."""
    parts = leaves(retriever)
    kinds = [getattr(leaf, "kind", type(leaf).__name__) for leaf in parts]
    if "selfretrieval" in kinds:
        return "Self-Retrieval memorised its corpus in the model's weights: new documents need another training run"
    other = next((k for k, leaf in zip(kinds, parts) if k not in ("bm25", "dense") or not hasattr(leaf, "index")),
                 None)  # fmt: skip
    if other is not None:
        return f"a '{other}' retriever has no document index that can be edited (BM25, dense and hybrids of them can)"
    dense = [leaf for leaf in parts if leaf.kind == "dense"]
    if len(dense) > 1:
        return "this hybrid has more than one dense part; the server runs one encoder, so it could embed for one only"
    if dense and dense[0].encoder is not encoder:
        return "the server's encoder is not the dense index's own, so new documents would be embedded differently"
    return None


def upsert(index, ids: list[str], values: list) -> None:
    """Replace the ids `index` holds, add the others (values: texts for BM25, vectors for dense)."""
    known = set(index.ids)
    old = [n for n, doc_id in enumerate(ids) if doc_id in known]
    new = [n for n, doc_id in enumerate(ids) if doc_id not in known]
    if old:
        index.update([ids[n] for n in old], [values[n] for n in old])
    if new:
        index.add([ids[n] for n in new], [values[n] for n in new])


def edited(retriever, change):
    """A shallow copy of `retriever` whose index (each part's, in a hybrid) is a copy that `change(kind, index)`
    edited; `retriever` and its indexes stay untouched, so searches go on reading them meanwhile."""
    staged = copy.copy(retriever)
    if retriever.kind == "hybrid":
        staged.parts = [edited(part, change) for part in retriever.parts]
    else:
        staged.index = retriever.index.copy()
        change(retriever.kind, staged.index)
    return staged


def adopt(retriever, staged) -> None:
    """One assignment swaps the edited index (or the hybrid's list of parts) in: a search reads the old or the new."""
    if retriever.kind == "hybrid":
        retriever.parts = staged.parts
    else:
        retriever.index = staged.index


class Documents:
    """Adds, replaces and deletes the served documents. One writer at a time (the lock) edits copies of the
    indexes, saves them to `folder` (atomically: irlm.utils.atomic_path) and only then swaps them in: searches
    meanwhile read the old index, none sees half of an update, and an answered update is on disk."""

    def __init__(self, retriever, folder: Path, embed):
        self.retriever, self.folder, self.embed = retriever, folder, embed
        self.dense = any(leaf.kind == "dense" for leaf in leaves(retriever))
        self.lock = threading.Lock()

    def upsert(self, docs: list[Document]) -> dict:
        ids, texts = [d.id for d in docs], [d.full_text() for d in docs]  # title and text, as `irlm index` does
        vectors = self.embed(texts) if self.dense else None  # before the lock: encoding holds no other writer back
        with self.lock:
            replaced = len(set(ids) & set(self.ids()))
            self.commit(lambda kind, index: upsert(index, ids, texts if kind == "bm25" else vectors))
            return {"added": len(ids) - replaced, "replaced": replaced, "docs": doc_count(self.retriever)}

    def delete(self, doc_id: str) -> dict:
        with self.lock:
            if doc_id not in set(self.ids()):
                raise APIError(404, f"no document with id '{doc_id}' in the index", "id")
            if doc_count(self.retriever) == 1:
                raise APIError(409, f"'{doc_id}' is the last document; an index keeps at least one", "id")
            self.commit(lambda kind, index: index.remove([doc_id]))
            return {"deleted": 1, "docs": doc_count(self.retriever)}

    def ids(self) -> list[str]:
        return leaves(self.retriever)[0].index.ids  # a hybrid's parts index the same documents

    def commit(self, change) -> None:
        try:
            staged = edited(self.retriever, change)
            staged.save(self.folder)  # the folder holds the old documents or the new ones, even after a kill -9
        except InputError as e:  # e.g. BM25 finds no indexable term left
            raise APIError(400, str(e)) from e
        adopt(self.retriever, staged)


def document_store(retriever, encoder, batcher: MicroBatcher, writable: bool, folder) -> tuple[Documents | None, str]:
    """The writer behind /documents, or None and why updates are refused (403). A writable server that could
    not save its updates refuses to start rather than failing at the first one."""
    why = update_refusal(retriever, encoder)
    if not writable:
        return None, f"this server cannot change its documents: {why}" if why else READ_ONLY
    if why:
        raise InputError(f"--writable: {why}")
    if folder is None:
        raise InputError("writable=True needs the index folder the updates are saved to", field="folder")
    check_replaceable(folder, "--writable index", kind="index")

    def embed(texts: list[str]) -> list[np.ndarray]:  # through the batcher: its thread owns the encoder
        return [row for row, _ in submit(batcher, [("passage", text, 0) for text in texts])]

    return Documents(retriever, Path(folder), embed), ""


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


def build_app(retriever, encoder=None, api_key_env: str | None = "IRLM_API_KEY", max_query_chars: int = 2048,
              max_k: int = 1000, batch_size: int = 16, max_texts: int = 64, max_text_chars: int = 32768,
              fast_path: bool | None = None, model_name: str | None = None, writable: bool = False,
              folder: str | Path | None = None, max_documents: int = 256) -> FastAPI:  # fmt: skip
    """A FastAPI app serving `retriever`; when $`api_key_env` is set, every route but /health needs
    `Authorization: Bearer <key>`. `fast_path` (default: for BM25) answers /search without the batcher;
    `model_name` is the id /v1/models lists and /v1/embeddings expects (default: the encoder's model).
    `writable` accepts POST /documents and DELETE /documents/{id}, each saved to `folder` (the index's own)
    before it is answered; otherwise both are 403.

    Example:
        >>> app = build_app(open_retriever("runs/scifact-bm25"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8001)  # doctest: +SKIP
    """
    encoder = encoder or find_encoder(retriever)
    # 2 ms: a lone request waits that long for company; under load batches form while the previous one runs
    batcher = MicroBatcher(batch_runner(retriever, encoder), max_batch=batch_size, max_wait_ms=2,
                           key=lambda item: item[0])  # fmt: skip
    metrics = Metrics(batcher)

    api_key = read_api_key(api_key_env)
    limits = Limits(max_query_chars, max_k, max_texts, max_text_chars, max_documents)
    fast = is_cheap(retriever) if fast_path is None else fast_path
    app = FastAPI(title="irlm search", lifespan=closing_lifespan(batcher), **docs_pages(api_key))
    if fast:  # added first: the innermost middleware, inside the guards and Measure
        app.add_middleware(SearchLane, retriever=retriever, limits=limits, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, refuse=lambda m: APIError(413, m))  # as serve-llm
    app.add_middleware(KeyGuard, api_key=api_key, refuse=lambda: APIError(401, WRONG_KEY, code="invalid_api_key"))
    app.add_middleware(Measure, metrics=metrics)  # added last: the outermost
    add_error_handlers(app)
    router = APIRouter(dependencies=[Depends(key_checker(api_key))])
    add_search_route(router, limits, batcher, retriever if fast else None, metrics)
    add_routes(router, limits, batcher, encoder, metrics)
    add_openai_routes(router, limits, batcher, encoder, model_name)
    documents, refusal = document_store(retriever, encoder, batcher, writable, folder)
    add_document_routes(router, limits, documents, refusal)
    app.include_router(router)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "kind": getattr(retriever, "kind", type(retriever).__name__),
                "docs": doc_count(retriever), "encode": encoder is not None,
                "writable": documents is not None}  # fmt: skip

    return app


def add_search_route(router: APIRouter, limits: Limits, batcher: MicroBatcher, direct, metrics: Metrics) -> None:
    """/search through the batcher, or with `direct` (a cheap retriever) on the event loop itself: no thread
    hop, no batcher hand-off, no wait for company; one search at a time, each far shorter than a request."""
    if direct is not None:

        @router.post("/search")
        async def search_now(req: SearchRequest) -> dict:
            return {"results": search_directly(direct, limits, metrics, req)}

        return

    # plain `def` route: FastAPI runs it in its thread pool, so a blocking batch never stalls the loop
    @router.post("/search")
    def search(req: SearchRequest) -> dict:
        limits.check_search(req)
        return {"results": submit(batcher, [("search", req.query, req.k)])[0]}


def add_routes(router: APIRouter, limits: Limits, batcher: MicroBatcher, encoder, metrics: Metrics) -> None:
    @router.post("/encode")
    def encode(req: EncodeRequest) -> dict:
        if encoder is None:
            raise APIError(400, "this index has no dense encoder (BM25 or generative): /encode is unavailable")
        limits.check_encode(req)
        return {"embeddings": [row.tolist() for row, _ in submit(batcher, [(req.kind, t, 0) for t in req.texts])]}

    @router.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_TEXT)


def add_document_routes(router: APIRouter, limits: Limits, documents: Documents | None, refusal: str) -> None:
    """POST /documents adds or replaces, DELETE /documents/{id} removes (an id may hold "/": the path's rest)."""

    async def writable() -> None:  # a dependency: runs before the body is validated
        if documents is None:
            raise APIError(403, refusal)

    # plain `def` routes: FastAPI runs them in its thread pool, so re-indexing and saving never stall the loop
    @router.post("/documents", dependencies=[Depends(writable)])
    def add_documents(req: DocumentsRequest) -> dict:
        limits.check_documents(req)
        return documents.upsert([Document(d.id, d.text, d.title or "") for d in req.documents])

    @router.delete("/documents/{doc_id:path}", dependencies=[Depends(writable)])
    def delete_document(doc_id: str) -> dict:
        return documents.delete(doc_id)


def add_openai_routes(router: APIRouter, limits: Limits, batcher: MicroBatcher, encoder, name: str | None) -> None:
    """OpenAI's embeddings API over the dense encoder: `dimensions` truncates, then L2-normalises."""
    model_id = name or (encoder.config.model if encoder is not None else None)

    @router.get("/v1/models")
    def models() -> dict:
        entries = [] if encoder is None else [{"id": model_id, "object": "model", "created": 0, "owned_by": "irlm",
                                               "dimensions": encoder.dim,
                                               "max_input_tokens": encoder.config.max_length}]  # fmt: skip
        return {"object": "list", "data": entries}

    @router.post("/v1/embeddings")
    def embeddings(req: EmbeddingsRequest) -> dict:
        if encoder is None:
            raise APIError(400, "this index has no dense encoder (BM25 or generative): /v1/embeddings is unavailable",
                           "model", "model_not_found")  # fmt: skip
        if req.model != model_id:
            raise APIError(404, f"model '{req.model}' is not served here; this server serves '{model_id}'",
                           "model", "model_not_found")  # fmt: skip
        if req.dimensions is not None and req.dimensions > encoder.dim:
            raise APIError(400, f"dimensions: {req.dimensions} is more than the model's {encoder.dim}", "dimensions")
        texts = [req.input] if isinstance(req.input, str) else req.input
        limits.check_inputs(texts)
        rows = submit(batcher, [(req.input_type, text, 0) for text in texts])
        vectors = [wire(shorten(row, req.dimensions), req.encoding_format) for row, _ in rows]
        data = [{"object": "embedding", "index": n, "embedding": v} for n, v in enumerate(vectors)]
        tokens = sum(count for _, count in rows)
        return {"object": "list", "data": data, "model": model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def shorten(row: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` values, L2-normalised again (Matryoshka-style truncation, as OpenAI's models do)."""
    if dimensions is None or dimensions == len(row):
        return row
    head = row[:dimensions].astype(np.float32)
    return head / max(float(np.linalg.norm(head)), 1e-12)


def wire(row: np.ndarray, encoding_format: str):
    """A list of floats, or base64 of the little-endian float32 bytes (what the openai client asks for by default)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.tolist()


def submit(batcher: MicroBatcher, items: list[tuple[str, str, int]]) -> list:
    try:
        return batcher.submit_many(items)
    except InputError as e:
        raise APIError(400, str(e)) from e


def key_checker(api_key: str | None):
    """A dependency that accepts everything without a key, else only `Authorization: Bearer <key>`."""

    async def check(request: Request) -> None:  # async: a plain `def` dependency costs a thread-pool hop
        if not bearer_ok(request, api_key):
            raise APIError(401, WRONG_KEY, code="invalid_api_key")

    return check


def add_error_handlers(app: FastAPI) -> None:
    """Malformed JSON is 400, a body that is not JSON 415, an invalid field 422 (one too large 413, see Limits);
    the message names the field. Under /v1/ an invalid field is 400, as OpenAI answers, in OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.render(is_openai(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        openai = is_openai(request.url.path)
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind != "application/json" and not kind.endswith("+json"):  # FastAPI left the body unparsed
            message = f"the body is sent as '{kind}'; send JSON with 'Content-Type: application/json'"
            return APIError(415, message).render(openai)
        error = validation_error(e.errors()[0])
        if openai and error.status == 422:
            error.status, error.code = 400, str(e.errors()[0].get("type"))
        return error.render(openai)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        error = APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}")
        return error.render(is_openai(request.url.path))

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        return APIError(500, f"{type(e).__name__}: {e}").render(is_openai(request.url.path))


def validation_error(err: dict) -> APIError:
    """The first pydantic error as one line, e.g. `k: Input should be greater than or equal to 1`."""
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return APIError(400, f"malformed JSON body: {detail}".strip())
    loc = field_path(err.get("loc", ()))
    where = ".".join(loc) or "request body"
    message = str(err["msg"]).removeprefix("Value error, ")  # our own validators' words need no prefix
    return APIError(422, f"{where}: {message}", loc[0] if loc else None)


def open_retriever(index: str, device: str | None = None, data: str | None = None):
    """Any saved system, through the one registry (irlm.systems): an index folder, a Self-Retrieval model
    folder with the corpus it memorised (`data`, by default the one its manifest names), a reasoning
    model or index."""
    from irlm.systems import load_retriever

    return load_retriever(index, device, data)


def serve(index: str, host: str = "127.0.0.1", port: int = 8001, api_key_env: str | None = "IRLM_API_KEY",
          batch_size: int = 16, device: str | None = None, data: str | None = None, fast_path: bool | None = None,
          model_name: str | None = None, writable: bool = False) -> None:  # fmt: skip
    """Load the retriever in `index` once and serve it on host:port until interrupted; `writable` accepts
    document updates, each saved to `index` before it is answered.

    The key, if any, is read from the environment variable `api_key_env` so it never shows in `ps`.

    Example:
        >>> serve("runs/scifact-bm25", port=8001)  # doctest: +SKIP
    """
    import uvicorn

    if read_api_key(api_key_env) is None and not is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it can use it (set $%s)", host,
                    api_key_env or "IRLM_API_KEY")  # fmt: skip
    lock = WriterLock(index) if writable else None  # one writer per index: a second one's save would undo ours
    try:
        restore_interrupted(index)  # a save killed between its two renames, where renames cannot swap (not Linux)
        retriever = open_retriever(index, device, data)
        # a micro-batch of batch_size is one encoder forward: larger ones only make early requests wait for later
        app = build_app(retriever, api_key_env=api_key_env, batch_size=batch_size, fast_path=fast_path,
                        model_name=model_name, writable=writable, folder=index)  # fmt: skip
        if lock:
            release_at_shutdown(app, lock)
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        if lock:
            lock.release()


def release_at_shutdown(app: FastAPI, lock: WriterLock) -> None:
    """Release `lock` when the app shuts down, after its last request: uvicorn re-raises the SIGTERM or SIGINT
    that stopped it once it has shut down, so code after uvicorn.run never runs then."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with inner(app) as state:
            yield state
        lock.release()

    app.router.lifespan_context = lifespan
