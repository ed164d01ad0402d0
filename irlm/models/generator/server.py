"""Serve an in-process generator behind the OpenAI API, so any OpenAI client (or `OpenAIGenerator`) can use it.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`, `POST /tokenize` (vLLM's
shape, for exact token counts) and `GET /health`. Concurrent requests with the same sampling settings
are micro-batched into one `generate` call. Bad input is a 4xx with an OpenAI error body, never a 500.

One worker runs the model, so every request is bounded: at most `max_tokens` new tokens (a chat that names
none gets a default), at most one micro-batch of prompts, at most 4 stop strings of 64 characters, a body
of at most MAX_BODY_BYTES (refused from its Content-Length, before reading), and the key checked before
the body is parsed. A client that disconnects has its prompts dropped from the queue or stopped at their
next token; on SIGTERM the running generation is cancelled after a short grace period, not finished.

Example:
    >>> serve_llm("smollm2-135m", port=8000)  # doctest: +SKIP
    $ curl -s localhost:8000/v1/completions -H 'content-type: application/json' -d '{"prompt": "Hi", "max_tokens": 8}'
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException

from irlm.batching import MicroBatcher, closing_lifespan
from irlm.errors import InputError
from irlm.guards import (
    MAX_BODY_BYTES,
    WRONG_KEY,
    BodyLimit,
    KeyGuard,
    docs_pages,
    field_path,
    key_checker,
    read_api_key,
    warn_if_open,
)
from irlm.models.generator.base import BudgetExceeded, Generation, Generator, Prompt, SamplingParams

log = logging.getLogger(__name__)

NonEmpty = Annotated[str, Field(min_length=1)]  # an empty prompt has no last token to continue from
MAX_STOP = 4  # stop strings per request, OpenAI's own limit: each one costs the worker a scan of the vocabulary
MAX_STOP_CHARS = 64
DEFAULT_MAX_TOKENS = 256  # a chat without max_tokens: enough for a query, a ranking or a triplet
MAX_TOKENS = 1024  # the longest one request may hold the single worker: it bounds every other client's wait
GRACE_S = 2  # seconds in-flight requests get after SIGTERM before their generation is cancelled


class APIError(Exception):
    """An error the client should see as `{"error": {...}}` with this status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class Sampling(BaseModel):
    """Fields both endpoints share. Strict: "16" is not a number and true is not 1."""

    # extra fields (user, logprobs=null, frequency_penalty, ...) are ignored, as OpenAI clients send many
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default; OpenAIGenerator always sends its own
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, stream: bool) -> bool:
        if stream:
            raise ValueError("streaming is not supported")
        return stream

    @field_validator("stop")
    @classmethod
    def _few_short_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return stop

    def params(self, max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_tokens, self.temperature, self.top_p, stop, self.seed)


class CompletionRequest(Sampling):
    prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1)]
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for /completions


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # None: the server's default (DEFAULT_MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for max_tokens


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


def wrong_key() -> APIError:
    return APIError(401, WRONG_KEY, code="invalid_api_key")


def sampling_key(item: tuple[Prompt, SamplingParams, threading.Event]) -> tuple:
    """Requests share a `generate` call only when every sampling setting is equal."""
    p = item[1]
    return p.max_new_tokens, p.temperature, p.top_p, tuple(p.stop), p.seed


def build_app(generator: Generator, api_key: str | None = None, max_batch: int = 16,
              max_tokens: int = MAX_TOKENS, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> FastAPI:  # fmt: skip
    """A FastAPI app serving `generator`; with `api_key`, every /v1 route needs `Authorization: Bearer <key>`.

    A request may ask for at most `max_tokens` new tokens (a chat that names none gets `default_max_tokens`),
    so no client can hold the single worker longer than that.

    Example:
        >>> app = build_app(TransformersGenerator("smollm2-135m"), api_key="secret")  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """

    per_row = "cancelled" in inspect.signature(generator.generate).parameters

    def run_batch(items: list[tuple[Prompt, SamplingParams, threading.Event]]) -> list[Generation]:
        """Prompts whose client went away while queued are not run; those leaving mid-batch stop at their
        next token (`cancelled`), while the rest of the batch goes on."""
        out = [Generation("", 0, 0, "cancelled") for _ in items]
        live = [n for n, (_, _, gone) in enumerate(items) if not gone.is_set()]
        if live:
            kw = {"cancelled": [items[n][2] for n in live]} if per_row else {}
            for n, g in zip(live, generator.generate([items[n][0] for n in live], items[0][1], **kw)):
                out[n] = g
        return out

    batcher = MicroBatcher(run_batch, max_batch=max_batch, max_wait_ms=5, key=sampling_key)

    app = FastAPI(title="irlm generator", lifespan=closing_lifespan(batcher, getattr(generator, "cancel", None)),
                  **docs_pages(api_key))  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, refuse=lambda m: APIError(413, m, code="body_too_large"))
    app.add_middleware(KeyGuard, api_key=api_key, refuse=wrong_key)
    add_error_handlers(app)
    v1 = APIRouter(dependencies=[Depends(key_checker(api_key, refuse=wrong_key))])
    add_routes(v1, generator, batcher, TokenBounds(max_tokens, min(default_max_tokens, max_tokens), max_batch))
    app.include_router(v1)

    @app.get("/health")
    def health() -> dict:
        usage = getattr(generator, "usage", None)
        return {"status": "ok", "model": generator.name, "batches": batcher.batches, "prompts": batcher.items,
                "completion_tokens": getattr(usage, "completion_tokens", None)}  # fmt: skip

    return app


@dataclass
class TokenBounds:
    """The most new tokens a request may ask for, what a request that names none gets, and the most prompts
    one request may hold (one micro-batch: a list of 10,000 prompts would hold the worker for all of them)."""

    limit: int
    default: int
    prompts: int = 16

    def check(self, asked: int | None, context: int) -> int:
        if asked is not None and asked > self.limit:
            raise APIError(400, f"max_tokens={asked} is more than this server's limit of {self.limit}", "max_tokens")
        return asked or min(self.default, context)  # a small model's context may be under the default


def add_routes(router: APIRouter, generator: Generator, batcher: MicroBatcher, bounds: TokenBounds) -> None:
    # plain `def` routes: FastAPI runs them in its thread pool, so the blocking generate never stalls the loop
    @router.get("/v1/models")
    def models() -> dict:
        entry = {"id": generator.name, "object": "model", "created": 0, "owned_by": "irlm",
                 "context_length": generator.context_length, "max_model_len": generator.context_length}  # fmt: skip
        return {"object": "list", "data": [entry]}

    # generation routes are async only to watch the connection: the blocking work runs in a worker thread
    @router.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> dict:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) > bounds.prompts:
            raise APIError(400, f"at most {bounds.prompts} prompts per request, got {len(prompts)}", "prompt")
        max_tokens = bounds.check(req.max_tokens, generator.context_length)
        gens = await while_connected(request, lambda gone: run_prompts(generator, batcher, prompts, req, max_tokens,
                                                                       gone))  # fmt: skip
        choices = [{"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
                   for i, g in enumerate(gens)]  # fmt: skip
        return envelope("cmpl", "text_completion", generator.name, choices, gens)

    @router.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> dict:
        max_tokens = bounds.check(req.max_completion_tokens or req.max_tokens, generator.context_length)
        chat = [[m.as_dict() for m in req.messages]]
        (g,) = await while_connected(request, lambda gone: run_prompts(generator, batcher, chat, req, max_tokens, gone))
        choice = {"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason}
        return envelope("chatcmpl", "chat.completion", generator.name, [choice], [g])

    @router.post("/tokenize")
    def tokenize(req: TokenizeRequest) -> dict:
        check_model(generator, req.model)
        prompt = req.prompt if req.prompt is not None else [m.as_dict() for m in req.messages]
        return {"count": generator.count_tokens(prompt), "max_model_len": generator.context_length}


async def while_connected(request: Request, work: Callable[[threading.Event], list], poll_s: float = 0.05) -> list:
    """Run `work(gone)` in a worker thread; `gone` is set once the client disconnects, or this request is
    cancelled (uvicorn's shutdown), so the generation stops at its next token instead of running on for nobody."""
    gone = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(poll_s)
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        # abandon_on_cancel: a cancelled request returns at once (its `gone` stops the thread's generation)
        return await anyio.to_thread.run_sync(work, gone, abandon_on_cancel=True)
    finally:
        gone.set()  # after an answer: harmless; after a cancellation: stops the generation
        watcher.cancel()


def run_prompts(generator: Generator, batcher: MicroBatcher, prompts: list[Prompt], req: Sampling,
                max_tokens: int, gone: threading.Event | None = None) -> list[Generation]:  # fmt: skip
    """Check what would fail the whole batch (and so other clients' requests) before queueing."""
    check_model(generator, req.model)
    ctx = generator.context_length
    if max_tokens > ctx:
        raise APIError(400, f"max_tokens={max_tokens} exceeds the model's context of {ctx} tokens", "max_tokens")
    for prompt in prompts:
        n = generator.count_tokens(prompt)
        if n + 1 > ctx:  # at least one token must fit after the prompt
            raise APIError(400, f"the prompt has {n} tokens; the model's context is {ctx} tokens",
                           "messages" if isinstance(prompt, list) else "prompt", "context_length_exceeded")  # fmt: skip
    try:
        gone = gone or threading.Event()
        return batcher.submit_many([(p, req.params(max_tokens), gone) for p in prompts])
    except InputError as e:
        raise APIError(400, str(e)) from e
    except BudgetExceeded as e:
        raise APIError(429, str(e), code="insufficient_quota", kind="insufficient_quota") from e


def check_model(generator: Generator, model: str | None) -> None:
    if model is not None and model != generator.name:
        raise APIError(404, f"model '{model}' is not served here; this server serves '{generator.name}'", "model",
                       "model_not_found")  # fmt: skip


def envelope(prefix: str, kind: str, model: str, choices: list[dict], gens: list[Generation]) -> dict:
    prompt_tokens = sum(g.prompt_tokens for g in gens)
    completion_tokens = sum(g.completion_tokens for g in gens)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage}  # fmt: skip


def add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI error body; a malformed or invalid request is 400, as OpenAI answers."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return APIError(400, f"malformed JSON body: {detail}".strip(), code="json_invalid").response()
        loc = field_path(err.get("loc", ()))
        message = f"{'.'.join(loc)}: {err['msg']}" if loc else str(err["msg"])
        return APIError(400, message, loc[0] if loc else None, err.get("type")).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return APIError(e.status_code, str(e.detail), kind="invalid_request_error").response()

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        return APIError(500, f"{type(e).__name__}: {e}", kind="server_error").response()


def serve_llm(model: str = "smollm2-135m", host: str = "127.0.0.1", port: int = 8000,
              api_key_env: str | None = "IRLM_API_KEY", batch_size: int = 8, device: str | None = None,
              dtype: str = "auto", max_tokens: int = MAX_TOKENS) -> None:  # fmt: skip
    """Load `model` in this process and serve it on host:port until interrupted.

    The key, if any, is read from the environment variable `api_key_env` so it never shows in `ps`.

    Example:
        >>> serve_llm("smollm2-135m", port=8000)  # doctest: +SKIP
    """
    import uvicorn

    from irlm.models.generator.local import TransformersGenerator

    api_key = read_api_key(api_key_env)
    warn_if_open(host, api_key, api_key_env)
    generator = TransformersGenerator(model, device=device, dtype=dtype, batch_size=batch_size)
    # a micro-batch of batch_size is one forward loop: larger ones only make early requests wait for later ones
    app = build_app(generator, api_key=api_key, max_batch=batch_size, max_tokens=max_tokens)
    # SIGTERM: in-flight requests get a few seconds, then the lifespan cancels the running generation
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=GRACE_S)
