"""Limits and auth of the search service: the one error a client sees (APIError, in irlm's shape or
under /v1/ in OpenAI's), the bounds on a request (Limits: 413 or 422 beyond them), the API key check on
every route but /health, and the handlers that turn bad input into a one-line 4xx, never a 500. The ASGI
guards run before the app reads a body (key, body size) are irlm.guards', shared with `irlm serve-llm`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from irlm.guards import WRONG_KEY, field_path
from irlm.serve.schemas import DocumentsRequest, EncodeRequest, SearchRequest

log = logging.getLogger(__name__)


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


def wrong_key() -> APIError:
    return APIError(401, WRONG_KEY, code="invalid_api_key")


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


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
