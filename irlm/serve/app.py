"""The app and its routes: build_app wires one retriever to the schemas, limits, store, metrics and
lane of this package (the middlewares in their order, the routes, the error handlers), and serve runs it
under uvicorn, holding the index's writer lock while it is writable."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response

from irlm.batching import MicroBatcher, closing_lifespan
from irlm.guards import (
    MAX_BODY_BYTES,
    BodyLimit,
    KeyGuard,
    docs_pages,
    key_checker,
    read_api_key,
    warn_if_open,
)
from irlm.serve.lane import SearchLane, batch_runner, is_cheap, search_directly, submit
from irlm.serve.limits import APIError, Limits, add_error_handlers, wrong_key
from irlm.serve.metrics import Measure, Metrics
from irlm.serve.schemas import DocumentsRequest, EmbeddingsRequest, EncodeRequest, SearchRequest
from irlm.serve.store import Documents, doc_count, document_store
from irlm.types import Document
from irlm.utils import WriterLock, restore_interrupted

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


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
    encoder = encoder or retriever.encoder  # the Retriever protocol: None where there is none
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
    app.add_middleware(KeyGuard, api_key=api_key, refuse=wrong_key)
    app.add_middleware(Measure, metrics=metrics)  # added last: the outermost
    add_error_handlers(app)
    router = APIRouter(dependencies=[Depends(key_checker(api_key, refuse=wrong_key))])
    add_search_route(router, limits, batcher, retriever if fast else None, metrics)
    add_routes(router, limits, batcher, encoder, metrics)
    add_openai_routes(router, limits, batcher, encoder, model_name)
    documents, refusal = document_store(retriever, encoder, batcher, writable, folder)
    add_document_routes(router, limits, documents, refusal)
    app.include_router(router)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "kind": retriever.kind, "docs": doc_count(retriever), "encode": encoder is not None,
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

    warn_if_open(host, read_api_key(api_key_env), api_key_env)
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
