"""HTTP search service: one retriever, loaded once, behind `POST /search`, `POST /encode`, `GET /health`
and `GET /metrics` (Prometheus text).

Concurrent requests are micro-batched: the searches that arrive together become one `retriever.search`
call, the texts to embed one encoder call. Bad input is a 4xx with `{"error": message, "field": name}`,
never a 500.

Example:
    >>> serve("runs/scifact-bm25", port=8001)  # doctest: +SKIP
    $ curl -s localhost:8001/search -H 'content-type: application/json' -d '{"query": "vitamin D", "k": 5}'
    {"results": [{"id": "4983", "score": 21.3}, ...]}
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from irlm.batching import MicroBatcher, closing_lifespan
from irlm.errors import InputError
from irlm.index import load_retriever
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

log = logging.getLogger(__name__)

ROUTES = ("/search", "/encode", "/health", "/metrics")  # metric labels; any other path counts as "other"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


class APIError(Exception):
    """An error the client should see as `{"error": message, "field": name}` with this status."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "field": self.field}, status_code=self.status)


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


@dataclass
class Limits:
    """This app's bounds on a request; beyond them the answer is 413 (too large) or 422 (k)."""

    max_query_chars: int = 2048
    max_k: int = 1000
    max_texts: int = 64
    max_text_chars: int = 32768  # passages run longer than queries; the encoder truncates to its max_length

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
    return sum(len(docs) for docs in getattr(retriever, "under", {}).values())  # self-retrieval's trie leaves


def ranked(scores: dict[str, float], k: int) -> list[dict]:
    best = sorted(scores.items(), key=lambda kv: -kv[1])[:k]  # stable: ties keep the retriever's order
    return [{"id": doc_id, "score": score} for doc_id, score in best]


def batch_runner(retriever, encoder):
    """One function for every batch, so a single worker thread owns the model: items are (op, text, k)
    and a batch holds one op only (the batcher's key)."""

    def run(items: list[tuple[str, str, int]]) -> list:
        op = items[0][0]
        texts = [text for _, text, _ in items]
        if op == "search":
            # one call at the largest k, then each request cut to its own k
            run = retriever.search({str(n): t for n, t in enumerate(texts)}, max(k for *_, k in items))
            return [ranked(run.get(str(n), {}), k) for n, (*_, k) in enumerate(items)]
        encode = encoder.encode_queries if op == "query" else encoder.encode_corpus
        return [row.tolist() for row in encode(texts, progress=False)]

    return run


class Metrics:
    """Request counters and latency histograms, written by hand in Prometheus' text format (0.0.4)."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list] = {}  # endpoint -> [per-bucket counts..., +Inf count, sum]

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1
        hist = self.latency.setdefault(endpoint, [0] * (len(BUCKETS) + 1) + [0.0])
        hist[next((n for n, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
        hist[-1] += seconds

    def render(self, batcher: MicroBatcher) -> str:
        lines = ["# HELP irlm_requests_total HTTP requests by endpoint and status.",
                 "# TYPE irlm_requests_total counter"]  # fmt: skip
        lines += [f'irlm_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in self.requests.items()]
        lines += ["# HELP irlm_request_seconds Time from request to response.",
                  "# TYPE irlm_request_seconds histogram"]  # fmt: skip
        for endpoint, hist in self.latency.items():
            lines += histogram_lines(endpoint, hist)
        lines += ["# HELP irlm_batches_total Batched calls to the retriever or encoder.",
                  "# TYPE irlm_batches_total counter", f"irlm_batches_total {batcher.batches}",
                  "# HELP irlm_batched_items_total Queries and texts those calls held.",
                  "# TYPE irlm_batched_items_total counter", f"irlm_batched_items_total {batcher.items}"]  # fmt: skip
        return "\n".join(lines) + "\n"


def histogram_lines(endpoint: str, hist: list) -> list[str]:
    label = f'endpoint="{endpoint}"'
    counts, total = hist[:-1], 0
    lines = []
    for bound, n in zip([*map(str, BUCKETS), "+Inf"], counts):
        total += n  # Prometheus buckets are cumulative
        lines.append(f'irlm_request_seconds_bucket{{{label},le="{bound}"}} {total}')
    lines.append(f"irlm_request_seconds_sum{{{label}}} {hist[-1]:.6f}")
    return lines + [f"irlm_request_seconds_count{{{label}}} {total}"]


def build_app(retriever, encoder=None, api_key_env: str | None = "IRLM_API_KEY", max_query_chars: int = 2048,
              max_k: int = 1000, batch_size: int = 16, max_texts: int = 64,
              max_text_chars: int = 32768) -> FastAPI:  # fmt: skip
    """A FastAPI app serving `retriever`; when $`api_key_env` is set, every route but /health needs
    `Authorization: Bearer <key>`.

    Example:
        >>> app = build_app(load_retriever("runs/scifact-bm25"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8001)  # doctest: +SKIP
    """
    encoder = encoder or find_encoder(retriever)
    # 2 ms: a lone request waits that long for company; under load batches form while the previous one runs
    batcher = MicroBatcher(batch_runner(retriever, encoder), max_batch=batch_size, max_wait_ms=2,
                           key=lambda item: item[0])  # fmt: skip
    metrics = Metrics()

    api_key = read_api_key(api_key_env)
    app = FastAPI(title="irlm search", lifespan=closing_lifespan(batcher), **docs_pages(api_key))
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, refuse=lambda m: APIError(413, m))  # as serve-llm
    app.add_middleware(KeyGuard, api_key=api_key, refuse=lambda: APIError(401, WRONG_KEY))
    add_error_handlers(app)
    add_metrics(app, metrics)
    router = APIRouter(dependencies=[Depends(key_checker(api_key))])
    add_routes(router, Limits(max_query_chars, max_k, max_texts, max_text_chars), batcher, encoder, metrics)
    app.include_router(router)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "kind": getattr(retriever, "kind", type(retriever).__name__),
                "docs": doc_count(retriever), "encode": encoder is not None}  # fmt: skip

    return app


def add_routes(router: APIRouter, limits: Limits, batcher: MicroBatcher, encoder, metrics: Metrics) -> None:
    # plain `def` routes: FastAPI runs them in its thread pool, so a blocking batch never stalls the loop
    @router.post("/search")
    def search(req: SearchRequest) -> dict:
        limits.check_search(req)
        return {"results": submit(batcher, [("search", req.query, req.k)])[0]}

    @router.post("/encode")
    def encode(req: EncodeRequest) -> dict:
        if encoder is None:
            raise APIError(400, "this index has no dense encoder (BM25 or generative): /encode is unavailable")
        limits.check_encode(req)
        return {"embeddings": submit(batcher, [(req.kind, text, 0) for text in req.texts])}

    @router.get("/metrics")
    async def prometheus() -> PlainTextResponse:  # async: read on the event loop, where the counters are written
        return PlainTextResponse(metrics.render(batcher), media_type="text/plain; version=0.0.4; charset=utf-8")


def submit(batcher: MicroBatcher, items: list[tuple[str, str, int]]) -> list:
    try:
        return batcher.submit_many(items)
    except InputError as e:
        raise APIError(400, str(e)) from e


def add_metrics(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def measure(request: Request, call_next):
        endpoint = request.url.path if request.url.path in ROUTES else "other"  # bounded label values
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.observe(endpoint, status, time.perf_counter() - start)


def key_checker(api_key: str | None):
    """A dependency that accepts everything without a key, else only `Authorization: Bearer <key>`."""

    def check(request: Request) -> None:
        if not bearer_ok(request, api_key):
            raise APIError(401, WRONG_KEY)

    return check


def add_error_handlers(app: FastAPI) -> None:
    """Malformed JSON is 400, a body that is not JSON 415, an invalid field 422 (one too large 413, see Limits);
    the message names the field."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind != "application/json" and not kind.endswith("+json"):  # FastAPI left the body unparsed
            message = f"the body is sent as '{kind}'; send JSON with 'Content-Type: application/json'"
            return APIError(415, message).response()
        return validation_error(e.errors()[0]).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}").response()

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        return APIError(500, f"{type(e).__name__}: {e}").response()


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
    """A saved index folder, or a Self-Retrieval model folder with the corpus it memorised (`data`,
    by default the dataset named in its selfretrieval.json)."""
    from irlm.methods.selfretrieval.retriever import CONFIG_FILE, SelfRetriever

    config = Path(index) / CONFIG_FILE
    if not config.is_file():
        return load_retriever(index, device)
    from irlm.data import load_dataset

    data = data or json.loads(config.read_text()).get("data")
    if not data:
        raise InputError("no dataset named; pass the corpus the model memorised", str(config), field="data")
    return SelfRetriever.load(index, load_dataset(data).corpus, device)


def serve(index: str, host: str = "127.0.0.1", port: int = 8001, api_key_env: str | None = "IRLM_API_KEY",
          batch_size: int = 16, device: str | None = None, data: str | None = None) -> None:  # fmt: skip
    """Load the retriever in `index` once and serve it on host:port until interrupted.

    The key, if any, is read from the environment variable `api_key_env` so it never shows in `ps`.

    Example:
        >>> serve("runs/scifact-bm25", port=8001)  # doctest: +SKIP
    """
    import uvicorn

    if read_api_key(api_key_env) is None and not is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it can use it (set $%s)", host,
                    api_key_env or "IRLM_API_KEY")  # fmt: skip
    retriever = open_retriever(index, device, data)
    # a micro-batch of batch_size is one encoder forward: larger ones only make early requests wait for later ones
    app = build_app(retriever, api_key_env=api_key_env, batch_size=batch_size)
    uvicorn.run(app, host=host, port=port, log_level="info")
